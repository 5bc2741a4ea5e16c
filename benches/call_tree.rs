//! Cost of a call's actor tree: admit (supervisor, two legs, media with two RTP ports),
//! answer, hang up, close out (registry removal, CDR queued), on a real node with SQLite.
//!
//! `cargo bench --bench call_tree`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use waswitch::call::leg::LegSignal;
use waswitch::call::{CallOffer, CallPlan, Calls, LegRole};
use waswitch::config::Config;
use waswitch::node::Node;
use waswitch::store::{Direction, HangupParty};

async fn one_call(calls: &Calls) {
    let id = calls
        .start(
            CallOffer::new(Direction::UserInitiated),
            CallPlan::Signalled(Direction::UserInitiated),
        )
        .await
        .expect("admitted");
    calls.signal(&id, LegRole::Business, LegSignal::Ringing);
    calls.signal(&id, LegRole::Business, LegSignal::Answered);
    assert!(
        calls
            .hangup(&id, HangupParty::Customer, "normal_clearing")
            .await
    );
}

fn call_tree(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let node = rt.block_on(async {
        let mut config = Config::loopback("", &dir.path().join("bench.db")).expect("config");
        config.shutdown.grace = Duration::from_millis(100);
        Node::start(config).await.expect("node")
    });
    let calls = node.calls().clone();

    let mut group = c.benchmark_group("call_tree");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lifecycle_sequential", |b| {
        b.iter(|| rt.block_on(one_call(&calls)))
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("lifecycle_100_concurrent", |b| {
        b.iter(|| {
            rt.block_on(async {
                futures::future::join_all((0..100).map(|_| one_call(&calls))).await;
            })
        })
    });
    group.finish();
    let report = rt.block_on(node.drain_and_stop());
    assert!(report.clean());
}

criterion_group!(benches, call_tree);
criterion_main!(benches);
