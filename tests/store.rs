//! CDR repository contract, run against embedded SQLite and a real PostgreSQL server.
//!
//! PostgreSQL comes from `WASWITCH_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`; `.ci/run` starts one when none is running).
//! Each test works in a schema of its own, dropped at the end.

use std::time::Duration;

mod common;

use common::pg::PgSchema;
use waswitch::config::{StoreConfig, StoreUrl};
use waswitch::store::{
    CallOutcome, Cdr, CdrFilter, CdrRepository, Direction, HangupParty, MediaQuality, Store,
    StoreError,
};

fn sqlite_config(path: &std::path::Path) -> StoreConfig {
    StoreConfig {
        url: StoreUrl::Sqlite(path.to_string_lossy().into_owned()),
        max_connections: 4,
        cdr_batch_size: 100,
        cdr_flush_interval: Duration::from_millis(50),
    }
}

fn cdr(n: i64, direction: Direction, outcome: CallOutcome) -> Cdr {
    let offered_at = 1_700_000_000_000 + n * 1000;
    let answered = outcome == CallOutcome::Answered;
    Cdr {
        call_id: format!("call-{n:05}"),
        node_id: "node-a".into(),
        direction,
        business_number: Some(
            if n % 2 == 0 {
                "15550001111"
            } else {
                "15550002222"
            }
            .into(),
        ),
        customer_wa_id: Some(format!("49151{n:07}")),
        wa_call_id: (n % 3 == 0).then(|| format!("wacid.{n}")),
        sip_call_id: None,
        trunk: Some("pbx".into()),
        offered_at,
        ringing_at: Some(offered_at + 100),
        answered_at: answered.then_some(offered_at + 2000),
        ended_at: offered_at + 62_000,
        duration_ms: if answered { 60_000 } else { 0 },
        outcome,
        hangup_by: if n % 2 == 0 {
            HangupParty::Customer
        } else {
            HangupParty::Business
        },
        end_cause: "normal_clearing".into(),
        failure: (outcome == CallOutcome::Failed).then(|| "media failed: boom".to_string()),
        media: answered.then_some(MediaQuality {
            packets: 6000 + n,
            lost: n % 4,
            jitter_ms: 3,
            mos_centi: 438,
        }),
        codec_path: answered.then(|| "PCMU pass-through".to_string()),
        // Some calls went through an IVR: the record round-trips as written.
        control: (n % 5 == 0).then(|| waswitch::store::ControlRecord {
            ivr: "front".into(),
            ivr_path: vec!["main".into(), "2".into(), "sales".into()],
            digits: vec!["2".into()],
            voicemail: (n % 10 == 0).then(|| format!("voicemail/call-{n:05}.wav")),
            messages: 1,
            callback_requests: u32::from(n % 10 == 0),
            end: None,
            queue: (n % 10 == 5).then(|| "support".to_string()),
            agent: (n % 10 == 5).then(|| "alice".to_string()),
            queue_wait_ms: (n % 10 == 5).then_some(4200),
            queue_outcome: (n % 10 == 5).then(|| "answered".to_string()),
            app: (n % 10 == 0).then(|| "demo".to_string()),
            app_error: (n % 20 == 0).then(|| "timeout: the app did not answer".to_string()),
            streams: if n % 10 == 0 {
                vec![waswitch::store::StreamRecord {
                    url: "wss://bot.example/media".into(),
                    format: "twilio".into(),
                    stream_sid: format!("MZ{n:032x}"),
                    duration_ms: 12_345,
                    end: "handover".into(),
                    handover: serde_json::json!({"queue": "sales"}).as_object().cloned(),
                    bytes_to_bot: 98_760,
                    bytes_from_bot: 54_320,
                    malformed: 1,
                    flood_dropped_bytes: 0,
                    attempts: 1,
                    to_bot_us: Some([180, 950]),
                    to_caller_us: Some([40_100, 41_000]),
                    error: None,
                }]
            } else {
                Vec::new()
            },
        }),
        // Some were recorded, and Meta's recording linked to some.
        recording: (n % 4 == 0).then(|| waswitch::store::CdrRecording {
            id: format!("call-{n:05}-0a1b2c3d"),
            file: format!("s3://recordings/calls/call-{n:05}-0a1b2c3d.ogg"),
            sha256: format!("{n:064x}"),
        }),
        meta_recording_id: (n % 6 == 0).then(|| format!("meta-{n}")),
        meta_transcript_id: (n % 12 == 0).then(|| format!("meta-t{n}")),
    }
}

fn sample() -> Vec<Cdr> {
    (0..30)
        .map(|n| {
            let direction = if n % 3 == 0 {
                Direction::BusinessInitiated
            } else {
                Direction::UserInitiated
            };
            let outcome = match n % 5 {
                0 => CallOutcome::Failed,
                1 | 2 => CallOutcome::Unanswered,
                _ => CallOutcome::Answered,
            };
            cdr(n, direction, outcome)
        })
        .collect()
}

async fn insert_is_idempotent_and_round_trips(store: &Store) {
    let cdrs = sample();
    assert_eq!(store.insert_batch(&cdrs).await.expect("insert"), 30);
    // A retried batch after an uncertain commit: only the new record is added.
    let mut retry = cdrs[..5].to_vec();
    retry.push(cdr(99, Direction::UserInitiated, CallOutcome::Answered));
    assert_eq!(store.insert_batch(&retry).await.expect("retry"), 1);
    assert_eq!(store.insert_batch(&[]).await.expect("empty"), 0);
    for c in cdrs.iter().chain(retry.last()) {
        let back = store.get(&c.call_id).await.expect("get").expect("stored");
        assert_eq!(&back, c);
    }
    assert!(store.get("no-such-call").await.expect("get").is_none());
    assert_eq!(store.count(&CdrFilter::default()).await.expect("count"), 31);
}

async fn list_filters_and_pages_newest_first(store: &Store) {
    store.insert_batch(&sample()).await.expect("insert");
    let all = store.list(&CdrFilter::default()).await.expect("list");
    assert_eq!(all.len(), 30);
    assert!(all.windows(2).all(|w| w[0].offered_at >= w[1].offered_at));
    assert_eq!(all[0].call_id, "call-00029");

    let failed = CdrFilter {
        outcome: Some(CallOutcome::Failed),
        ..CdrFilter::default()
    };
    let rows = store.list(&failed).await.expect("list");
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|c| c.failure.is_some()));
    assert_eq!(store.count(&failed).await.expect("count"), 6);

    let bic_of_one_number = CdrFilter {
        direction: Some(Direction::BusinessInitiated),
        business_number: Some("15550001111".into()),
        ..CdrFilter::default()
    };
    let rows = store.list(&bic_of_one_number).await.expect("list");
    let expected: Vec<_> = sample()
        .into_iter()
        .rev()
        .filter(|c| {
            c.direction == Direction::BusinessInitiated
                && c.business_number.as_deref() == Some("15550001111")
        })
        .collect();
    assert_eq!(rows, expected);

    let window = CdrFilter {
        since: Some(1_700_000_000_000 + 10_000),
        until: Some(1_700_000_000_000 + 20_000),
        ..CdrFilter::default()
    };
    let rows = store.list(&window).await.expect("list");
    assert_eq!(rows.len(), 10);
    assert_eq!(rows.last().map(|c| c.call_id.as_str()), Some("call-00010"));

    let mut seen = Vec::new();
    for page in 0..4 {
        let rows = store
            .list(&CdrFilter {
                limit: 8,
                offset: page * 8,
                ..CdrFilter::default()
            })
            .await
            .expect("page");
        assert!(rows.len() <= 8);
        seen.extend(rows.into_iter().map(|c| c.call_id));
    }
    assert_eq!(seen.len(), 30);
    seen.dedup();
    assert_eq!(seen.len(), 30, "pages overlap");
    let limited = CdrFilter {
        limit: 3,
        ..CdrFilter::default()
    };
    assert_eq!(store.count(&limited).await.expect("count"), 30);
}

async fn large_batches_are_split_within_one_transaction(store: &Store) {
    let many: Vec<_> = (0..1_234)
        .map(|n| cdr(n, Direction::UserInitiated, CallOutcome::Answered))
        .collect();
    assert_eq!(store.insert_batch(&many).await.expect("insert"), 1_234);
    assert_eq!(
        store.count(&CdrFilter::default()).await.expect("count"),
        1_234
    );
}

fn assert_corrupt(result: Result<Option<Cdr>, StoreError>) {
    match result {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("sideways"), "{msg}"),
        other => panic!("expected a corrupt-record error, got {other:?}"),
    }
}

const CORRUPT_ROW: &str = "INSERT INTO cdrs (call_id, node_id, direction, offered_at, ended_at, \
     duration_ms, outcome, hangup_by, end_cause) VALUES ('bad', 'n', 'sideways', 0, 0, 0, \
     'answered', 'customer', 'x')";

/// Runs one contract check on a fresh SQLite file and on a fresh PostgreSQL schema.
macro_rules! on_both_backends {
    ($($check:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let store = super::Store::open(&super::sqlite_config(&dir.path().join("t.db")))
                        .await
                        .expect("open SQLite store");
                    super::$check(&store).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $check() {
                    let schema = super::PgSchema::create().await;
                    let store = schema.open().await;
                    super::$check(&store).await;
                    store.close().await;
                    schema.drop().await;
                }
            )+
        }
    };
}

on_both_backends!(
    insert_is_idempotent_and_round_trips,
    list_filters_and_pages_newest_first,
    large_batches_are_split_within_one_transaction,
    migrations_reapply_cleanly_and_corrupt_rows_are_reported,
    audit_trail_appends_in_one_chain_and_verify_names_each_tampering,
    records_of_one_customer_in_older_spellings_are_found_and_replayed_as_one,
    stored_agents_are_added_changed_listed_and_deleted,
    the_cdr_webhook_sends_what_a_stopped_node_left_in_its_outbox,
);

fn hook_config(url: &str, max_attempts: u32) -> waswitch::config::CdrWebhookConfig {
    waswitch::config::CdrWebhookConfig {
        url: url.to_string(),
        secret: waswitch::config::Secret::new("outbox-secret"),
        timeout: Duration::from_secs(2),
        max_attempts,
    }
}

/// CDRs stored with their outbox rows wait there until a sender delivers them: a node that
/// stopped before its webhook took them sends them, in the order the calls ended, once
/// each, when it starts again. A CDR the receiver refuses past the last attempt leaves the
/// queue and stays in the outbox, marked; one stored without a webhook never enters it.
async fn the_cdr_webhook_sends_what_a_stopped_node_left_in_its_outbox(store: &Store) {
    // Three calls ended in the order 2, 0, 1; stored by node n1 whose webhook never ran.
    let mut cdrs: Vec<Cdr> = (0..3)
        .map(|n| cdr(n, Direction::UserInitiated, CallOutcome::Answered))
        .collect();
    cdrs[0].ended_at += 20_000;
    cdrs[1].ended_at += 10_000;
    cdrs[2].ended_at -= 5_000;
    assert_eq!(
        store.insert_cdrs(&cdrs, Some("n1")).await.expect("insert"),
        3
    );
    // A retried batch adds no second row; a CDR stored without a webhook adds none.
    assert_eq!(
        store.insert_cdrs(&cdrs, Some("n1")).await.expect("retry"),
        0
    );
    let quiet = cdr(7, Direction::UserInitiated, CallOutcome::Unanswered);
    store.insert_cdrs(&[quiet], None).await.expect("insert");
    assert_eq!(store.webhook_backlog(Some("n1")).await.expect("backlog"), 3);
    assert_eq!(store.webhook_backlog(Some("n2")).await.expect("backlog"), 0);

    // The node starts again: its sender finds them.
    let (url, got) = common::webhook_sink(false).await;
    let hook = waswitch::store::webhook::start(hook_config(&url, 3), store.clone(), "n1", false)
        .expect("sender");
    assert!(
        hook.drain(Duration::from_secs(10)).await,
        "outbox not drained"
    );
    let bodies: Vec<Cdr> = got
        .lock()
        .expect("sink")
        .iter()
        .map(|(_, _, b)| serde_json::from_slice(b).expect("a CDR"))
        .collect();
    let ids: Vec<&str> = bodies.iter().map(|c| c.call_id.as_str()).collect();
    assert_eq!(ids, ["call-00002", "call-00001", "call-00000"]);
    assert_eq!(bodies[0], cdrs[2]);
    for (ts, signature, body) in got.lock().expect("sink").iter() {
        assert_eq!(
            *signature,
            waswitch::store::webhook::signature(b"outbox-secret", *ts, body)
        );
    }
    assert_eq!(store.webhook_backlog(None).await.expect("backlog"), 0);
    // Nothing is sent twice.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(got.lock().expect("sink").len(), 3);

    // A receiver that refuses: the sender gives up after its attempts, and the row stays,
    // out of the queue.
    let (url, got, _gate) = common::webhook_gate().await;
    let refused = cdr(8, Direction::BusinessInitiated, CallOutcome::Answered);
    store
        .insert_cdrs(std::slice::from_ref(&refused), Some("n3"))
        .await
        .expect("insert");
    let hook = waswitch::store::webhook::start(hook_config(&url, 2), store.clone(), "n3", false)
        .expect("sender");
    assert!(
        hook.drain(Duration::from_secs(10)).await,
        "outbox not drained"
    );
    assert!(got.lock().expect("sink").is_empty());
    assert_eq!(store.webhook_backlog(Some("n3")).await.expect("backlog"), 0);
    let (kept,): (i64,) = match store {
        Store::Sqlite(p) => sqlx::query_as(
            "SELECT COUNT(*) FROM cdr_webhook_outbox WHERE call_id = 'call-00008' \
             AND gave_up_at IS NOT NULL AND attempts = 2",
        )
        .fetch_one(p)
        .await
        .expect("count"),
        Store::Postgres(p) => sqlx::query_as(
            "SELECT COUNT(*) FROM cdr_webhook_outbox WHERE call_id = 'call-00008' \
             AND gave_up_at IS NOT NULL AND attempts = 2",
        )
        .fetch_one(p)
        .await
        .expect("count"),
    };
    assert_eq!(kept, 1, "the refused CDR is kept, marked");
}

/// In a cluster a node adopts the CDRs waiting for the webhook of nodes that are not alive
/// (lost, left, or never registered), never those of a live node; two adopters at once
/// split them, each row going to one.
#[tokio::test]
async fn cdrs_of_nodes_gone_are_adopted_once_for_the_webhook() {
    let schema = PgSchema::create().await;
    let store = schema.open().await;
    let now = 1_800_000_000_000;
    store
        .heartbeat("alive", "http://a", "up", now)
        .await
        .expect("beat");
    for live in ["me", "you"] {
        store
            .heartbeat(live, "http://l", "up", now)
            .await
            .expect("beat");
    }
    store
        .heartbeat("draining", "http://d", "draining", now)
        .await
        .expect("beat");
    store
        .heartbeat("silent", "http://s", "up", now - 10_000)
        .await
        .expect("beat");
    store
        .heartbeat("gone", "http://g", "up", now)
        .await
        .expect("beat");
    store.leave_cluster("gone").await.expect("left");
    let mut n = 0;
    for node in ["alive", "draining", "silent", "gone", "unknown"] {
        let cdrs: Vec<Cdr> = (0..40)
            .map(|_| {
                n += 1;
                cdr(n, Direction::UserInitiated, CallOutcome::Answered)
            })
            .collect();
        store.insert_cdrs(&cdrs, Some(node)).await.expect("insert");
    }
    let since = now - 3_000;
    let (one, two) = tokio::join!(
        store.webhook_adopt("me", since),
        store.webhook_adopt("you", since)
    );
    let (one, two) = (one.expect("adopt"), two.expect("adopt"));
    assert_eq!(one + two, 120, "{one} + {two}");
    assert_eq!(store.webhook_backlog(Some("me")).await.expect("n"), one);
    assert_eq!(store.webhook_backlog(Some("you")).await.expect("n"), two);
    for node in ["alive", "draining"] {
        assert_eq!(store.webhook_backlog(Some(node)).await.expect("n"), 40);
    }
    for node in ["silent", "gone", "unknown"] {
        assert_eq!(store.webhook_backlog(Some(node)).await.expect("n"), 0);
    }
    store.close().await;
    schema.drop().await;
}

async fn stored_agents_are_added_changed_listed_and_deleted(store: &Store) {
    use waswitch::store::agents::StoredAgent;
    let carol = StoredAgent {
        user: "carol".into(),
        ha1_md5: "a".repeat(32),
        ha1_sha256: "b".repeat(64),
        display_name: Some("Carol".into()),
        queues: vec!["support".into(), "sales".into()],
    };
    assert!(store.put_agent(&carol, 1).await.expect("put"), "new");
    let mut changed = carol.clone();
    changed.display_name = None;
    changed.queues = vec!["sales".into()];
    assert!(!store.put_agent(&changed, 2).await.expect("put"), "changed");
    let dave = StoredAgent {
        user: "dave".into(),
        ..carol.clone()
    };
    store.put_agent(&dave, 3).await.expect("put");
    assert_eq!(store.agents().await.expect("list"), vec![changed, dave]);
    assert!(store.delete_agent("carol").await.expect("delete"));
    assert!(!store.delete_agent("carol").await.expect("delete"));
    assert_eq!(store.agents().await.expect("list").len(), 1);
}

async fn exec(store: &Store, sql: &str) {
    match store {
        Store::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
        Store::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Concurrent appends form one gapless chain; `verify` finds an edited, a deleted, a
/// reordered and a cut-off record, and passes again once each is put back.
async fn audit_trail_appends_in_one_chain_and_verify_names_each_tampering(store: &Store) {
    use waswitch::permission::audit::{AuditEntry, Broken};
    use waswitch::permission::state::Actor;
    use waswitch::store::audit::{AuditFilter, AuditRepository, Verified};
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Verified::Intact(0)
    );
    let entry = |k: i64| AuditEntry {
        at: 1_700_000_000_000 + k,
        business_number: "15551112222".into(),
        wa_id: format!("4915100000{}", k % 4),
        kind: "granted".into(),
        actor: Actor::Customer,
        detail: format!("{{\"event\":\"granted\",\"permanent\":false,\"k\":{k}}}"),
    };
    let mut tasks = Vec::new();
    for k in 0..40 {
        let store = store.clone();
        let e = entry(k);
        tasks.push(tokio::spawn(async move { store.append_audit(&[e]).await }));
    }
    for t in tasks {
        t.await.expect("task").expect("append");
    }
    let all = store
        .audit_records(&AuditFilter::default())
        .await
        .expect("list");
    let seqs: Vec<i64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Verified::Intact(40)
    );
    let one = store
        .audit_records(&AuditFilter {
            wa_id: Some("49151000001".into()),
            ..AuditFilter::default()
        })
        .await
        .expect("by customer");
    assert_eq!(one.len(), 10);

    // Edited.
    let original = all[6].entry.detail.clone();
    exec(
        store,
        "UPDATE audit_records SET detail = '{\"event\":\"declined\"}' WHERE seq = 7",
    )
    .await;
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Verified::Broken(Broken::Altered { seq: 7 })
    );
    exec(
        store,
        &format!("UPDATE audit_records SET detail = '{original}' WHERE seq = 7"),
    )
    .await;
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Verified::Intact(40)
    );

    // Deleted.
    exec(store, "DELETE FROM audit_records WHERE seq = 12").await;
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Verified::Broken(Broken::Missing {
            expected: 12,
            found: 13
        })
    );
    let r = &all[11];
    exec(
        store,
        &format!(
            "INSERT INTO audit_records (seq, at, business_number, wa_id, kind, actor, detail, \
             prev_hash, hash) VALUES ({}, {}, '{}', '{}', '{}', 'customer', '{}', '{}', '{}')",
            r.seq,
            r.entry.at,
            r.entry.business_number,
            r.entry.wa_id,
            r.entry.kind,
            r.entry.detail,
            r.prev_hash,
            r.hash
        ),
    )
    .await;
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Verified::Intact(40)
    );

    // Reordered: records 20 and 21 trade places.
    exec(store, "UPDATE audit_records SET seq = -1 WHERE seq = 20").await;
    exec(store, "UPDATE audit_records SET seq = 20 WHERE seq = 21").await;
    exec(store, "UPDATE audit_records SET seq = 21 WHERE seq = -1").await;
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Verified::Broken(Broken::Altered { seq: 20 })
    );
    exec(store, "UPDATE audit_records SET seq = -1 WHERE seq = 20").await;
    exec(store, "UPDATE audit_records SET seq = 20 WHERE seq = 21").await;
    exec(store, "UPDATE audit_records SET seq = 21 WHERE seq = -1").await;
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Verified::Intact(40)
    );

    // Cut off at the end.
    exec(store, "DELETE FROM audit_records WHERE seq = 40").await;
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Verified::Broken(Broken::Truncated { last: 39, head: 40 })
    );
}

/// Reopening applies no migration twice, data survives, and a row edited into an impossible
/// value is reported as corrupt instead of misread.
async fn migrations_reapply_cleanly_and_corrupt_rows_are_reported(store: &Store) {
    store
        .insert_batch(&[cdr(1, Direction::UserInitiated, CallOutcome::Answered)])
        .await
        .expect("insert");
    match store {
        Store::Sqlite(pool) => {
            sqlx::migrate!("./migrations")
                .run(pool)
                .await
                .expect("re-migrate");
            sqlx::query(CORRUPT_ROW)
                .execute(pool)
                .await
                .expect("raw insert");
        }
        Store::Postgres(pool) => {
            sqlx::migrate!("./migrations")
                .run(pool)
                .await
                .expect("re-migrate");
            sqlx::query(CORRUPT_ROW)
                .execute(pool)
                .await
                .expect("raw insert");
        }
    }
    assert!(store.get("call-00001").await.expect("get").is_some());
    assert_corrupt(store.get("bad").await);
    assert!(store.ping(Duration::from_secs(1)).await.is_ok());
}

#[tokio::test]
async fn sqlite_file_and_directories_are_created_and_data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sqlite_config(&dir.path().join("nested/dir/d.db"));
    let store = Store::open(&config)
        .await
        .expect("open creates directories");
    store
        .insert_batch(&[cdr(1, Direction::UserInitiated, CallOutcome::Answered)])
        .await
        .expect("insert");
    store.close().await;
    let store = Store::open(&config).await.expect("reopen");
    assert!(store.get("call-00001").await.expect("get").is_some());
    let Store::Sqlite(pool) = &store else {
        unreachable!("opened SQLite")
    };
    sqlx::query(CORRUPT_ROW)
        .execute(pool)
        .await
        .expect("raw insert");
    assert_corrupt(store.get("bad").await);
    assert!(store.ping(Duration::from_secs(1)).await.is_ok());
}

#[tokio::test]
async fn unreachable_postgres_is_a_clear_open_error() {
    // Port 1 on loopback: nothing listens there.
    let config = StoreConfig {
        url: StoreUrl::Postgres("postgres://waswitch:secret@127.0.0.1:1/none".into()),
        max_connections: 1,
        cdr_batch_size: 1,
        cdr_flush_interval: Duration::from_millis(10),
    };
    let err = Store::open(&config)
        .await
        .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("secret"), "password leaked: {text}");
}

#[tokio::test]
async fn a_cdr_postgres_refuses_is_set_aside_and_the_others_are_written() {
    use waswitch::store::writer::{CdrQueue, CdrWriter, CdrWriterArgs};
    let schema = PgSchema::create().await;
    let store = schema.open().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = CdrQueue::new(100);
    let (writer, handle) = ractor::Actor::spawn(
        None,
        CdrWriter,
        CdrWriterArgs {
            store: store.clone(),
            queue: queue.clone(),
            batch_size: 100,
            flush_interval: Duration::from_millis(20),
            reject_dir: dir.path().to_path_buf(),
            webhook: None,
        },
    )
    .await
    .expect("writer starts");
    // PostgreSQL refuses a NUL octet in text: this record can never be stored.
    let mut poison = cdr(3, Direction::UserInitiated, CallOutcome::Answered);
    poison.end_cause = "normal\0clearing".into();
    // Queue them all before the writer's first pump can take a partial batch.
    for n in [1, 2] {
        queue
            .submit(cdr(n, Direction::UserInitiated, CallOutcome::Answered))
            .await;
    }
    queue.submit(poison).await;
    queue
        .submit(cdr(4, Direction::UserInitiated, CallOutcome::Answered))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while queue.outstanding() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "CDRs stuck behind the refused one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.count(&CdrFilter::default()).await.expect("count"), 3);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("cdr-rejected-"))
        .collect();
    assert_eq!(files.len(), 1);
    let saved = std::fs::read_to_string(&files[0]).expect("file");
    assert_eq!(saved.lines().count(), 1);
    assert!(saved.contains("call-00003"));
    writer.stop(None);
    let _ = handle.await;
    store.close().await;
    schema.drop().await;
}

/// Records written before numbers were normalised (the same customer as `+49…`, `0049…`
/// and `49…`, with no customer index) are indexed at start without touching the records:
/// a search by any spelling finds all three, the trail still verifies, and the permission
/// service rebuilds one customer from them.
async fn records_of_one_customer_in_older_spellings_are_found_and_replayed_as_one(store: &Store) {
    use waswitch::permission::audit::AuditEntry;
    use waswitch::permission::service::{Pair, Permissions};
    use waswitch::permission::state::{Actor, Rules, Status};
    use waswitch::store::audit::{AuditFilter, AuditRepository, Verified};
    let now = waswitch::call::now_ms();
    let entry = |wa_id: &str, kind: &str, detail: &str| AuditEntry {
        at: now,
        business_number: "15551112222".into(),
        wa_id: wa_id.into(),
        kind: kind.into(),
        actor: Actor::Customer,
        detail: detail.into(),
    };
    store
        .append_audit(&[
            entry(
                "+4915100000901",
                "granted",
                r#"{"event":"granted","permanent":true}"#,
            ),
            entry(
                "004915100000901",
                "dnc_added",
                r#"{"event":"dnc_added","reason":"x"}"#,
            ),
            entry("4915100000901", "dnc_removed", r#"{"event":"dnc_removed"}"#),
        ])
        .await
        .expect("append");
    // A call the previous release left answered mid-call: its answer a plain note.
    let far = now + 3_600_000;
    store
        .append_audit(&[
            entry(
                "+4915100000902",
                "granted",
                &format!(r#"{{"event":"granted","permanent":false,"expires_at":{far}}}"#),
            ),
            entry(
                "4915100000902",
                "call_attempted",
                r#"{"event":"call_reserved","call_id":"old-1"}"#,
            ),
            entry(
                "4915100000902",
                "call_connected",
                r#"{"call_id":"old-1","wa_call_id":"wacid.1"}"#,
            ),
        ])
        .await
        .expect("append");
    // As a store written before the customer index existed.
    exec(store, "UPDATE audit_records SET customer = NULL").await;
    assert_eq!(store.index_audit_customers().await.expect("index"), 6);
    let found = store
        .audit_records(&AuditFilter {
            wa_id: Some("4915100000901".into()),
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    let spelled: Vec<&str> = found.iter().map(|r| r.entry.wa_id.as_str()).collect();
    assert_eq!(
        spelled,
        ["+4915100000901", "004915100000901", "4915100000901"]
    );
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Verified::Intact(6)
    );
    let permissions = Permissions::load(store.clone(), Rules::strict(), "node-a")
        .await
        .expect("load");
    let view = permissions
        .view(&Pair::new("15551112222", "4915100000901"))
        .await;
    // One customer: granted, on the list, then off it again (written before an opt-out
    // voided consent, so the grant stands as it stood then).
    assert_eq!(view.status, Status::Granted, "{view:?}");
    assert!(!view.dnc, "{view:?}");
    // The answered call is settled as connected at start: the one-call grant is used.
    let view = permissions
        .view(&Pair::new("15551112222", "4915100000902"))
        .await;
    assert_eq!(
        (view.calls_used, view.calls_in_progress),
        (1, 0),
        "{view:?}"
    );
    let settled = store
        .audit_records(&AuditFilter {
            wa_id: Some("4915100000902".into()),
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    let last = settled.last().expect("records");
    assert_eq!(last.entry.kind, "call_finished");
    let detail: serde_json::Value = serde_json::from_str(&last.entry.detail).expect("json");
    assert_eq!(detail["call_id"], "old-1", "{detail}");
    assert_eq!(detail["outcome"], "connected", "{detail}");
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Verified::Intact(7)
    );
}
