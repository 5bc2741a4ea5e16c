//! The permission service: the live state of every (business number, customer) pair, kept
//! in step with the audit trail.
//!
//! Every change is an [`Event`] written to the audit trail first and applied only once the
//! write is committed, under the pair's lock: what the service acknowledges is in the
//! trail, and a restart rebuilds the same states by applying the trail again
//! ([`Permissions::load`]). A call attempt checks and reserves under that lock, so two
//! simultaneous attempts on a one-call permission cannot both pass.
//!
//! On PostgreSQL the nodes of a cluster share the trail, and a node's pair states are a
//! cache of it. The pair's lock is then also a PostgreSQL transaction holding an advisory
//! lock keyed by the pair ([`PairLock`]): under it the node first applies what other nodes
//! wrote for the pair since it last looked, then decides, appends and commits in that one
//! transaction. Whatever the number of nodes, a grant's budget, the daily call limit and the
//! request limits hold, and a redelivered reply is applied once. Each commit is announced
//! (`LISTEN/NOTIFY`); every node catches up on the pairs it names, so a do-not-call entry,
//! a revocation, a withdrawal or an expiry recorded on one node cancels the calls that
//! wait on it on every node ([`Permissions::spawn_cluster_listener`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex as StdMutex};

use dashmap::DashMap;
use serde_json::{json, Map, Value};

use crate::audit::{Actor, AuditEntry, AuditRecord};
use crate::clock::now_ms;
use crate::permission::state::{
    AttemptOutcome, Blocked, Event, PairState, Remaining, RequestRefused, Rules, Stage, Status,
};
use crate::store::audit::{AuditFilter, AuditRepository, PairLock};
use crate::store::{Store, StoreError};
use crate::tasks::Background;
use crate::telemetry;

/// How often a cluster's node reads the trail for what other nodes recorded, whether or
/// not it was notified.
const CLUSTER_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// A (business number, customer) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pair {
    /// The business's WhatsApp number (digits).
    pub business_number: String,
    /// The customer's WhatsApp id.
    pub wa_id: String,
}

impl Pair {
    /// The pair of `business_number` and `wa_id`, both already E.164 digits
    /// ([`crate::number::e164`]).
    pub fn new(business_number: &str, wa_id: &str) -> Pair {
        Pair {
            business_number: business_number.to_string(),
            wa_id: wa_id.to_string(),
        }
    }

    /// The pair an audit record names, its numbers normalised: records written before
    /// numbers were normalised join the same customer's later ones.
    fn of_record(entry: &AuditEntry) -> Pair {
        Pair {
            business_number: crate::number::e164_or_raw(&entry.business_number),
            wa_id: crate::number::e164_or_raw(&entry.wa_id),
        }
    }
}

/// A call attempt holding its pair's permission; give it back with
/// [`Permissions::finish_call`].
#[derive(Debug)]
#[must_use = "a reservation is consumed or released with finish_call"]
pub struct Reservation {
    /// The pair.
    pub pair: Pair,
    /// The attempt's call id.
    pub call_id: String,
}

/// Why a permission operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PermissionError {
    /// The call (or the permission request) is refused by a call rule: policy or the
    /// do-not-call list.
    #[error("{0}")]
    Blocked(Blocked),
    /// The permission request is refused.
    #[error("{0}")]
    Refused(RequestRefused),
    /// The audit trail could not be written: nothing was done.
    #[error("audit trail not written: {0}")]
    Store(#[from] StoreError),
    /// Sending the request to Meta failed: nothing was recorded.
    #[error("permission request not sent: {0}")]
    Send(String),
    /// Meta took the request but the audit trail could not be written: the customer has
    /// the message, the trail does not (the limits still count it until a restart).
    #[error("permission request {message_id} sent but not recorded: {source}")]
    Unrecorded {
        /// Meta's id of the message sent.
        message_id: String,
        /// Why the trail was not written.
        source: StoreError,
    },
}

/// What a pair looks like now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PairView {
    /// The business number.
    pub business_number: String,
    /// The customer.
    pub wa_id: String,
    /// Where the permission stands (an expired grant reads `expired`).
    pub status: Status,
    /// On the do-not-call list.
    pub dnc: bool,
    /// When the grant in force ends (epoch ms; `None`: permanent, or none in force).
    pub expires_at: Option<i64>,
    /// A permanent grant is in force.
    pub permanent: bool,
    /// Connected calls made under the grant in force.
    pub calls_used: u32,
    /// Call attempts in progress holding the permission.
    pub calls_in_progress: u32,
    /// What can still be done now.
    pub remaining: Remaining,
}

/// Meta's reply message ids already applied, each kept as 16 bytes of its SHA-256 (a
/// message id is ~60 characters), with its size in `waswitch_state_entries`. It holds one
/// entry per reply ever applied: it grows with customers' replies, not with calls.
#[derive(Default)]
struct ReplyIds(HashSet<u128>);

impl ReplyIds {
    fn insert(&mut self, id: impl AsRef<str>) {
        if self.0.insert(crate::meta::webhook::id_digest(id.as_ref())) {
            metrics::gauge!(telemetry::STATE_ENTRIES, "table" => "permission_reply_ids")
                .set(self.0.len() as f64);
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.0.contains(&crate::meta::webhook::id_digest(id))
    }
}

struct Inner {
    store: Store,
    rules: Rules,
    /// This node (its call attempts are the ones it settles at start).
    node: String,
    pairs: DashMap<Pair, Arc<tokio::sync::Mutex<Cached>>>,
    /// The last position of the trail this node has heard of (cluster catch-up).
    tail: std::sync::atomic::AtomicI64,
    /// Meta's reply message ids already applied (a redelivered reply is not a new grant).
    replies: StdMutex<ReplyIds>,
    /// Meta's timestamp of the last reply applied per pair (an older one is superseded).
    last_reply: DashMap<Pair, i64>,
    /// Where ended permissions are announced.
    cutoffs: tokio::sync::broadcast::Sender<(Pair, Blocked)>,
    /// Records that outlive whoever asked for them (a call's settlement, a change whose
    /// HTTP client hung up), waited for at shutdown.
    background: Background,
}

/// The permission service. Cheap to clone.
#[derive(Clone)]
pub struct Permissions {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Permissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permissions")
            .field("pairs", &self.inner.pairs.len())
            .finish_non_exhaustive()
    }
}

impl Permissions {
    /// The service's records in flight that outlive whoever asked for them: a call's
    /// settlement after the call ended, a change whose HTTP client hung up. The node waits
    /// for them at shutdown.
    pub fn background(&self) -> &Background {
        &self.inner.background
    }
}

/// A pair's state as this node knows it: the trail applied up to position `seq`.
struct Cached {
    state: PairState,
    seq: i64,
    /// A transaction applied here did not commit: the state is rebuilt from the trail
    /// before it is used again.
    stale: bool,
}

impl Cached {
    fn new() -> Self {
        Cached {
            state: PairState::new(),
            seq: 0,
            stale: false,
        }
    }
}

/// A pair held: this node's lock on its state and, in a cluster, the pair's lock across
/// the nodes with the transaction its records are written in.
struct Locked {
    cached: tokio::sync::OwnedMutexGuard<Cached>,
    tx: Option<PairLock>,
    /// Records were appended in `tx` (and applied here).
    dirty: bool,
}

impl Drop for Locked {
    /// Let go without committing what it wrote: the records are gone, and what was applied
    /// of them here is rebuilt from the trail before the pair is used again.
    fn drop(&mut self) {
        if self.tx.is_some() && self.dirty {
            self.cached.stale = true;
        }
    }
}

impl std::ops::Deref for Locked {
    type Target = PairState;
    fn deref(&self) -> &PairState {
        &self.cached.state
    }
}

impl std::ops::DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut PairState {
        &mut self.cached.state
    }
}

/// A grant in force as recorded (a lapsed one counts until the sweep records its expiry).
fn active(state: &PairState) -> bool {
    state.status == Status::Granted
}

/// The audit entry of `event` (or of a note of `kind`) for `pair` at `at`.
fn entry(
    pair: &Pair,
    actor: Actor,
    at: i64,
    kind: &str,
    event: Option<&Event>,
    context: Map<String, Value>,
) -> AuditEntry {
    AuditEntry {
        at,
        business_number: pair.business_number.clone(),
        wa_id: pair.wa_id.clone(),
        kind: kind.to_string(),
        actor,
        detail: detail(event, context),
    }
}

/// The detail of an audit record: the event's own fields, then the context.
fn detail(event: Option<&Event>, context: Map<String, Value>) -> String {
    let mut map = match event.map(serde_json::to_value) {
        Some(Ok(Value::Object(m))) => m,
        _ => Map::new(),
    };
    for (k, v) in context {
        map.entry(k).or_insert(v);
    }
    Value::Object(map).to_string()
}

impl Permissions {
    /// The service of node `node` over `store`, its pairs rebuilt from the audit trail.
    /// Reservations left by calls that were in progress when the switch stopped are
    /// settled by the last stage the trail shows for them ([`Stage::settled_at_restart`]:
    /// never dialled is released, dialled counts as used, answered as connected), each with
    /// a record naming the call and why. In a cluster (PostgreSQL) only this node's own are
    /// (and those of records that name no node): the other nodes' calls are theirs.
    pub async fn load(store: Store, rules: Rules, node: &str) -> Result<Permissions, StoreError> {
        let cluster = matches!(store, Store::Postgres(_));
        let service = Permissions {
            inner: Arc::new(Inner {
                store,
                rules,
                node: node.to_string(),
                tail: std::sync::atomic::AtomicI64::new(0),
                pairs: DashMap::new(),
                replies: StdMutex::new(ReplyIds::default()),
                last_reply: DashMap::new(),
                cutoffs: tokio::sync::broadcast::channel(1024).0,
                background: Background::new(),
            }),
        };
        // The node that reserved each attempt still open at the end of the trail.
        let mut reserved_by: std::collections::HashMap<String, String> = Default::default();
        let mut last = 0;
        let records = service
            .inner
            .store
            .walk_audit(&AuditFilter::default(), |r| {
                service.replay(r, &mut reserved_by);
                last = r.seq;
                std::ops::ControlFlow::Continue(())
            })
            .await?;
        service
            .inner
            .tail
            .store(last, std::sync::atomic::Ordering::Relaxed);
        let mine = |call_id: &Option<String>| {
            let by = call_id.as_ref().and_then(|c| reserved_by.get(c));
            !cluster || by.is_none_or(|n| n == node)
        };
        let unsettled: Vec<(Pair, Option<String>, Stage)> = service
            .inner
            .pairs
            .iter()
            .flat_map(|e| {
                let pair = e.key().clone();
                let attempts = e
                    .value()
                    .try_lock()
                    .map(|s| s.state.attempts().to_vec())
                    .unwrap_or_default();
                attempts
                    .into_iter()
                    .map(move |a| (pair.clone(), a.call_id, a.stage))
            })
            .filter(|(_, call_id, _)| mine(call_id))
            .collect();
        for (pair, call_id, stage) in unsettled {
            let (outcome, why) = stage.settled_at_restart();
            let mut context = Map::new();
            context.insert("settled_at_start".into(), json!(why));
            context.insert("stage".into(), json!(stage));
            service
                .record(
                    &pair,
                    Actor::Switch,
                    Event::CallFinished { outcome, call_id },
                    context,
                )
                .await?;
            tracing::warn!(
                ?outcome,
                ?stage,
                "a call attempt the last run left unsettled; settled at start"
            );
        }
        let n = service
            .inner
            .pairs
            .iter()
            .filter(|e| e.value().try_lock().is_ok_and(|s| active(&s.state)))
            .count();
        metrics::gauge!(telemetry::PERMISSION_GRANTS_ACTIVE).set(n as f64);
        service.publish_pairs();
        tracing::info!(
            records,
            pairs = service.inner.pairs.len(),
            "permissions rebuilt from the audit trail"
        );
        Ok(service)
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.inner.rules
    }

    /// The store the trail is written to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn slot(&self, pair: &Pair) -> Arc<tokio::sync::Mutex<Cached>> {
        let (slot, new) = match self.inner.pairs.entry(pair.clone()) {
            dashmap::Entry::Occupied(e) => (e.get().clone(), false),
            dashmap::Entry::Vacant(e) => {
                let slot = Arc::new(tokio::sync::Mutex::new(Cached::new()));
                e.insert(slot.clone());
                (slot, true)
            }
        };
        // Counted once the entry's shard is let go (len() reads every shard).
        if new {
            self.publish_pairs();
        }
        slot
    }

    fn publish_pairs(&self) {
        metrics::gauge!(telemetry::STATE_ENTRIES, "table" => "permission_pairs")
            .set(self.inner.pairs.len() as f64);
    }

    /// Holds `pair` to change it: this node's lock and, in a cluster, the pair's lock
    /// across the nodes, with what other nodes wrote for it since applied first.
    async fn lock(&self, pair: &Pair) -> Result<Locked, StoreError> {
        let cached = self.slot(pair).lock_owned().await;
        let tx = self
            .inner
            .store
            .lock_pair(&pair.business_number, &pair.wa_id)
            .await?;
        let mut held = Locked {
            cached,
            tx,
            dirty: false,
        };
        if let Some(tx) = held.tx.as_mut() {
            // A pair rebuilt from its whole trail announces nothing: its old cut-offs are
            // not news.
            let rebuilt = std::mem::take(&mut held.cached.stale);
            if rebuilt {
                *held.cached = Cached::new();
            }
            let records = tx
                .records_after(&pair.business_number, &pair.wa_id, held.cached.seq)
                .await?;
            for r in &records {
                self.catch_up(pair, &mut held.cached, r, !rebuilt);
            }
        }
        Ok(held)
    }

    /// Commits what was written under `held` and lets the pair go. A commit that fails
    /// leaves the pair to be rebuilt from the trail.
    async fn release(&self, mut held: Locked) -> Result<(), StoreError> {
        let Some(tx) = held.tx.take() else {
            return Ok(());
        };
        if let Err(e) = tx.commit().await {
            held.cached.stale = held.dirty;
            return Err(e);
        }
        Ok(())
    }

    /// Appends `entries` for the held pair: in its transaction in a cluster, else committed
    /// at once. The records as written.
    async fn append(
        &self,
        held: &mut Locked,
        entries: &[AuditEntry],
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let written = match held.tx.as_mut() {
            Some(tx) => {
                held.dirty = true;
                tx.append(entries).await?
            }
            None => self.inner.store.append_audit(entries).await?,
        };
        if let Some(last) = written.last() {
            held.cached.seq = held.cached.seq.max(last.seq);
        }
        Ok(written)
    }

    /// The pair's state with what other nodes wrote applied (a read: the pair is not held
    /// across the nodes). The store unreachable, the state as last known.
    async fn current(&self, pair: &Pair) -> tokio::sync::OwnedMutexGuard<Cached> {
        let mut cached = self.slot(pair).lock_owned().await;
        if matches!(self.inner.store, Store::Postgres(_)) {
            let rebuilt = std::mem::take(&mut cached.stale);
            if rebuilt {
                *cached = Cached::new();
            }
            match self
                .inner
                .store
                .pair_records_after(&pair.business_number, &pair.wa_id, cached.seq)
                .await
            {
                Ok(records) => {
                    for r in &records {
                        self.catch_up(pair, &mut cached, r, !rebuilt);
                    }
                }
                Err(e) => {
                    cached.stale = rebuilt;
                    tracing::warn!(error = %e, "permission state not refreshed from the store; as last known")
                }
            }
        }
        cached
    }

    /// Applies a record another node wrote (or one this node wrote and has not applied):
    /// its reply id is known, and its event applied and, when `announce`, announced as if
    /// made here.
    fn catch_up(&self, pair: &Pair, cached: &mut Cached, r: &AuditRecord, announce: bool) {
        if r.seq <= cached.seq {
            return;
        }
        cached.seq = r.seq;
        if let Some(event) = self.note_record(pair, r) {
            if !announce {
                cached.state.apply(&self.inner.rules, r.entry.at, &event);
                return;
            }
            self.apply_all(
                pair,
                &mut cached.state,
                r.entry.at,
                std::slice::from_ref(&event),
            );
        }
    }

    /// Notes a record's reply id (and Meta's time of it), and gives its event, if any.
    fn note_record(&self, pair: &Pair, r: &AuditRecord) -> Option<Event> {
        let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(&r.entry.detail) else {
            return None;
        };
        if let Some(Value::String(id)) = map.get("message_id") {
            self.replies_mut().insert(id.clone());
            if let (Some(ts), true) = (
                map.get("meta_timestamp").and_then(Value::as_i64),
                map.contains_key("event"),
            ) {
                let mut last = self.inner.last_reply.entry(pair.clone()).or_insert(ts);
                if *last < ts {
                    *last = ts;
                }
            }
        }
        // `call_connected` was once written as a plain note; other notes (`call_blocked`,
        // `reply_superseded`, ...) change no permission.
        if !map.contains_key("event") && r.entry.kind == "call_connected" {
            map.insert("event".into(), json!("call_connected"));
        }
        serde_json::from_value::<Event>(Value::Object(map)).ok()
    }

    /// Applies one record of the trail (at load); notes which node reserved each attempt
    /// still open.
    fn replay(&self, r: &AuditRecord, reserved_by: &mut std::collections::HashMap<String, String>) {
        let pair = Pair::of_record(&r.entry);
        let Some(event) = self.note_record(&pair, r) else {
            return;
        };
        match &event {
            Event::CallReserved {
                call_id: Some(c), ..
            } => {
                let node = serde_json::from_str::<Value>(&r.entry.detail)
                    .ok()
                    .and_then(|d| d.get("node").and_then(Value::as_str).map(str::to_string));
                if let Some(node) = node {
                    reserved_by.insert(c.clone(), node);
                }
            }
            Event::CallFinished {
                call_id: Some(c), ..
            } => {
                reserved_by.remove(c);
            }
            _ => {}
        }
        let slot = self.slot(&pair);
        let Ok(mut cached) = slot.try_lock() else {
            return;
        };
        cached.seq = r.seq;
        cached.state.apply(&self.inner.rules, r.entry.at, &event);
    }

    fn replies_mut(&self) -> std::sync::MutexGuard<'_, ReplyIds> {
        self.inner
            .replies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `event` (with `context`) to the trail, then applies it. The record as written.
    ///
    /// A do-not-call entry added while a grant is in force voids it: `dnc_added` and
    /// `withdrawn` (with the reason) are written together, in one transaction.
    pub async fn record(
        &self,
        pair: &Pair,
        actor: Actor,
        event: Event,
        context: Map<String, Value>,
    ) -> Result<AuditRecord, StoreError> {
        let mut held = self.lock(pair).await?;
        let record = self.commit(pair, &mut held, actor, event, context).await?;
        self.release(held).await?;
        Ok(record)
    }

    /// [`record`](Self::record) on a pair already held.
    async fn commit(
        &self,
        pair: &Pair,
        held: &mut Locked,
        actor: Actor,
        event: Event,
        context: Map<String, Value>,
    ) -> Result<AuditRecord, StoreError> {
        let at = now_ms();
        // Opting out voids consent: the grant in force ends with the entry, and removing
        // the entry later restores nothing.
        let voids = matches!(event, Event::DncAdded { .. }) && active(held);
        let mut events = vec![(event, context.clone())];
        if voids {
            let mut why = context;
            why.insert(
                "reason".into(),
                json!("do-not-call entry added: consent voided"),
            );
            events.push((Event::Withdrawn, why));
        }
        let entries: Vec<AuditEntry> = events
            .iter()
            .map(|(e, context)| entry(pair, actor, at, e.name(), Some(e), context.clone()))
            .collect();
        let mut written = self.append(held, &entries).await?;
        let events: Vec<Event> = events.into_iter().map(|(e, _)| e).collect();
        self.apply_all(pair, held, at, &events);
        written
            .pop()
            .ok_or_else(|| StoreError::Corrupt("audit append wrote nothing".into()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        pair: &Pair,
        held: &mut Locked,
        actor: Actor,
        at: i64,
        kind: &str,
        event: Option<&Event>,
        context: Map<String, Value>,
    ) -> Result<AuditRecord, StoreError> {
        let entry = entry(pair, actor, at, kind, event, context);
        let mut written = self.append(held, &[entry]).await?;
        written
            .pop()
            .ok_or_else(|| StoreError::Corrupt("audit append wrote nothing".into()))
    }

    /// A reply from Meta (`message_id` once only): a grant (`expires_at` epoch ms for a
    /// temporary one), a decline, or a revocation, with any events that go with it (a
    /// customer's revocation puts them on the DNC list), written together in one
    /// transaction. A reply older (by Meta's `timestamp`, Unix seconds) than one already
    /// applied to the pair is recorded as `reply_superseded` and changes nothing: Meta
    /// does not promise order, and a retried delivery can arrive late. False when the
    /// reply was seen before or was superseded.
    pub async fn reply(
        &self,
        pair: &Pair,
        message_id: &str,
        events: &[Event],
        actor: Actor,
        meta_timestamp: Option<i64>,
        mut context: Map<String, Value>,
    ) -> Result<bool, StoreError> {
        let mut held = self.lock(pair).await?;
        if self.replies_mut().contains(message_id) {
            self.release(held).await?;
            return Ok(false);
        }
        context.insert("message_id".into(), json!(message_id));
        if let Some(ts) = meta_timestamp {
            context.insert("meta_timestamp".into(), json!(ts));
        }
        let at = now_ms();
        let last = self.inner.last_reply.get(pair).map(|e| *e.value());
        let superseded = match (meta_timestamp, last) {
            (Some(ts), Some(last)) if ts < last => Some("a later reply was applied"),
            // A grant given before the customer opted out (a late or retried delivery)
            // does not outlive the opt-out.
            (Some(ts), _)
                if events.iter().any(|e| matches!(e, Event::Granted { .. }))
                    && held
                        .dnc_since
                        .is_some_and(|since| ts.saturating_mul(1000) < since) =>
            {
                Some("older than the do-not-call entry")
            }
            _ => None,
        };
        if let Some(why) = superseded {
            context.insert("superseded".into(), json!(why));
            self.write(
                pair,
                &mut held,
                actor,
                at,
                "reply_superseded",
                None,
                context,
            )
            .await?;
            self.release(held).await?;
            self.replies_mut().insert(message_id);
            return Ok(false);
        }
        let entries: Vec<AuditEntry> = events
            .iter()
            .map(|e| entry(pair, actor, at, e.name(), Some(e), context.clone()))
            .collect();
        self.append(&mut held, &entries).await?;
        self.apply_all(pair, &mut held, at, events);
        let outcome = match held.status {
            Status::Granted => "granted",
            Status::Declined => "declined",
            _ => "revoked",
        };
        // Known as applied once it is committed: a reply whose record did not commit is
        // taken again when Meta retries it.
        self.release(held).await?;
        self.replies_mut().insert(message_id);
        if let Some(ts) = meta_timestamp {
            self.inner.last_reply.insert(pair.clone(), ts);
        }
        metrics::counter!(telemetry::PERMISSION_REPLIES_TOTAL, "outcome" => outcome).increment(1);
        Ok(true)
    }

    /// Sends a permission request (`send` delivers the message to Meta, free-form or as
    /// `template`, and gives its message id) if the call rules and the limits allow, and
    /// records it. Under the pair's lock, so two requests at once cannot both pass a
    /// limit of one.
    ///
    /// A request obeys the rules a call does: `policy` (sanctioned regions, excluded
    /// countries) and the do-not-call list refuse it with the call's reason, recorded in
    /// the trail (`request_blocked`, with the reason) as a refused call is; nothing is sent
    /// to Meta. A request over a limit is refused and counted, as before, without a record.
    pub async fn request<F, Fut>(
        &self,
        pair: &Pair,
        purpose: &str,
        template: Option<&str>,
        policy: Result<(), Blocked>,
        send: F,
    ) -> Result<AuditRecord, PermissionError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, String>>,
    {
        let mut held = self.lock(pair).await?;
        let now = now_ms();
        let verdict = policy
            .and_then(|()| {
                if held.dnc {
                    Err(Blocked::DoNotCall)
                } else {
                    Ok(())
                }
            })
            .map_err(PermissionError::Blocked)
            .and_then(|()| {
                held.check_request(&self.inner.rules, now)
                    .map_err(PermissionError::Refused)
            });
        if let Err(refused) = verdict {
            let reason = match &refused {
                PermissionError::Blocked(b) => {
                    let mut context = Map::new();
                    context.insert("reason".into(), json!(b.as_str()));
                    context.insert("purpose".into(), json!(purpose));
                    self.write(
                        pair,
                        &mut held,
                        Actor::Switch,
                        now,
                        "request_blocked",
                        None,
                        context,
                    )
                    .await?;
                    b.as_str()
                }
                PermissionError::Refused(r) => r.as_str(),
                _ => "refused",
            };
            self.release(held).await?;
            metrics::counter!(telemetry::PERMISSION_REQUESTS_TOTAL, "outcome" => reason)
                .increment(1);
            return Err(refused);
        }
        let message_id = match send().await {
            Ok(id) => id,
            Err(e) => {
                metrics::counter!(telemetry::PERMISSION_REQUESTS_TOTAL, "outcome" => "send_failed")
                    .increment(1);
                return Err(PermissionError::Send(e));
            }
        };
        let event = Event::Requested {
            purpose: purpose.to_string(),
        };
        let mut context = Map::new();
        context.insert("request_message_id".into(), json!(message_id));
        if let Some(t) = template {
            context.insert("template".into(), json!(t));
        }
        let written = self
            .write(
                pair,
                &mut held,
                Actor::Business,
                now,
                event.name(),
                Some(&event),
                context,
            )
            .await;
        // Sent either way: the limits count it (in a cluster, a record that did not
        // commit is not counted once the pair is rebuilt from the trail).
        self.apply_all(pair, &mut held, now, std::slice::from_ref(&event));
        let written = match written {
            Ok(record) => self.release(held).await.map(|()| record),
            Err(e) => Err(e),
        };
        metrics::counter!(telemetry::PERMISSION_REQUESTS_TOTAL, "outcome" => "sent").increment(1);
        written.map_err(|source| PermissionError::Unrecorded { message_id, source })
    }

    /// Checks a business-initiated call to `pair` and reserves the permission for it. A
    /// refusal is recorded (`call_blocked` with its reason) and counted; a grant found
    /// past its expiry is recorded as expired first.
    pub async fn reserve_call(
        &self,
        pair: &Pair,
        call_id: &str,
        policy: Result<(), Blocked>,
    ) -> Result<Reservation, PermissionError> {
        let mut held = self.lock(pair).await?;
        let now = now_ms();
        if held.expiry_due(now) {
            self.expire(pair, &mut held, now).await?;
        }
        let verdict = policy.and_then(|()| held.check_call(&self.inner.rules, now));
        let mut context = Map::new();
        context.insert("call_id".into(), json!(call_id));
        match verdict {
            Err(blocked) => {
                context.insert("reason".into(), json!(blocked.as_str()));
                self.write(
                    pair,
                    &mut held,
                    Actor::Switch,
                    now,
                    "call_blocked",
                    None,
                    context,
                )
                .await?;
                self.release(held).await?;
                metrics::counter!(telemetry::CALLS_BLOCKED_TOTAL, "reason" => blocked.as_str())
                    .increment(1);
                Err(PermissionError::Blocked(blocked))
            }
            Ok(()) => {
                let event = Event::CallReserved {
                    call_id: Some(call_id.to_string()),
                    staged: true,
                };
                // The node placing the call settles it if it restarts.
                context.insert("node".into(), json!(self.inner.node));
                self.write(
                    pair,
                    &mut held,
                    Actor::Business,
                    now,
                    event.name(),
                    Some(&event),
                    context,
                )
                .await?;
                self.apply_all(pair, &mut held, now, std::slice::from_ref(&event));
                self.release(held).await?;
                Ok(Reservation {
                    pair: pair.clone(),
                    call_id: call_id.to_string(),
                })
            }
        }
    }

    /// Ends a reserved attempt: a connected call uses the permission, an unanswered one
    /// counts toward automatic revocation, a failed one gives it back; `None` when how it
    /// ended is not known, and the attempt is settled by the last stage the trail shows,
    /// as a restart would ([`Stage::settled_at_restart`]: never dialled gives the
    /// permission back, anything later counts it used). Decided under the pair's lock, so
    /// no stage can be recorded in between. `context` adds the call's duration, Meta's ids,
    /// the end cause.
    pub async fn finish_call(
        &self,
        reservation: Reservation,
        outcome: Option<AttemptOutcome>,
        mut context: Map<String, Value>,
    ) -> Result<AuditRecord, StoreError> {
        let mut held = self.lock(&reservation.pair).await?;
        let outcome = match outcome {
            Some(o) => o,
            None => {
                let stage = held.stage(&reservation.call_id).unwrap_or(Stage::Reserved);
                context.insert("stage".into(), json!(stage));
                stage.settled_at_restart().0
            }
        };
        let event = Event::CallFinished {
            outcome,
            call_id: Some(reservation.call_id),
        };
        let record = self
            .commit(&reservation.pair, &mut held, Actor::Switch, event, context)
            .await?;
        self.release(held).await?;
        Ok(record)
    }

    /// Records that Meta is about to be asked to place the reserved attempt `call_id`
    /// (Graph `connect`). Called, and awaited, before the request is sent: an attempt the
    /// trail shows undialled is one Meta never heard of. False, with nothing recorded,
    /// when the attempt no longer holds the permission (it was settled meanwhile): then
    /// Meta must not be asked.
    pub async fn dialled(&self, pair: &Pair, call_id: &str) -> Result<bool, StoreError> {
        let mut held = self.lock(pair).await?;
        if held.stage(call_id).is_none() {
            self.release(held).await?;
            return Ok(false);
        }
        let event = Event::CallDialled {
            call_id: Some(call_id.to_string()),
        };
        self.commit(pair, &mut held, Actor::Switch, event, Map::new())
            .await?;
        self.release(held).await?;
        Ok(true)
    }

    /// Records that the customer answered the reserved attempt `call_id` (Meta's id of the
    /// call in the record).
    pub async fn answered(
        &self,
        pair: &Pair,
        call_id: &str,
        wa_call_id: Option<&str>,
    ) -> Result<AuditRecord, StoreError> {
        let mut context = Map::new();
        context.insert("wa_call_id".into(), json!(wa_call_id));
        self.record(
            pair,
            Actor::Customer,
            Event::CallConnected {
                call_id: Some(call_id.to_string()),
            },
            context,
        )
        .await
    }

    /// The pair's permission as it stands now.
    pub async fn view(&self, pair: &Pair) -> PairView {
        let cached = self.current(pair).await;
        let state = &cached.state;
        let now = now_ms();
        let status = if state.expiry_due(now) {
            Status::Expired
        } else {
            state.status
        };
        let grant = state.grant.as_ref().filter(|_| status == Status::Granted);
        PairView {
            business_number: pair.business_number.clone(),
            wa_id: pair.wa_id.clone(),
            status,
            dnc: state.dnc,
            expires_at: grant.and_then(|g| g.expires_at),
            permanent: grant.is_some_and(|g| g.expires_at.is_none()),
            calls_used: grant.map_or(0, |g| g.calls_used),
            calls_in_progress: state.reserved(),
            remaining: state.remaining(&self.inner.rules, now),
        }
    }

    /// A call between the pair connected (the customer's own call, answered): Meta resets
    /// the permission-request limits on any connected call, and so does the switch, with
    /// a record. Nothing is recorded for a pair with no requests counted.
    pub async fn user_call_connected(
        &self,
        pair: &Pair,
        answered_at: i64,
        context: Map<String, Value>,
    ) -> Result<bool, StoreError> {
        if !self.inner.pairs.contains_key(pair) {
            return Ok(false);
        }
        let mut held = self.lock(pair).await?;
        if !held.requests_counted() {
            self.release(held).await?;
            return Ok(false);
        }
        let event = Event::UserCallConnected {
            answered_at: Some(answered_at),
        };
        let record = self
            .write(
                pair,
                &mut held,
                Actor::Customer,
                now_ms(),
                event.name(),
                Some(&event),
                context,
            )
            .await?;
        self.apply_all(
            pair,
            &mut held,
            record.entry.at,
            std::slice::from_ref(&event),
        );
        self.release(held).await?;
        Ok(true)
    }

    /// Records `expired` for every grant past its expiry at `now` (Meta sends no webhook
    /// when a temporary grant lapses): the trail says when each grant ended, and the
    /// gauge of grants in force drops. The number recorded.
    pub async fn sweep_expired(&self, now: i64) -> Result<usize, StoreError> {
        let slots: Vec<(Pair, Arc<tokio::sync::Mutex<Cached>>)> = self
            .inner
            .pairs
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut n = 0;
        for (pair, slot) in slots {
            // Only the pairs due as last known are held (and looked at again).
            if !slot.lock().await.state.expiry_due(now) {
                continue;
            }
            let mut held = self.lock(&pair).await?;
            if held.expiry_due(now) {
                self.expire(&pair, &mut held, now).await?;
                n += 1;
            }
            self.release(held).await?;
        }
        Ok(n)
    }

    /// Runs [`Permissions::sweep_expired`] every `every` until the node stops.
    pub fn spawn_sweeper(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.sweep_expired(now_ms()).await {
                    tracing::warn!(error = %e, "expired grants not recorded; retried on the next sweep");
                }
            }
        })
    }

    /// In a cluster (PostgreSQL), listens for the records other nodes commit
    /// (`LISTEN/NOTIFY`) and brings the pairs they name up to date here: a permission
    /// ended on another node is announced to this node's calls within moments. The trail
    /// is also read every few seconds, and after the connection comes back, so a
    /// notification lost on the way costs only that delay. `None` on SQLite.
    pub fn spawn_cluster_listener(&self) -> Option<tokio::task::JoinHandle<()>> {
        let Store::Postgres(pool) = &self.inner.store else {
            return None;
        };
        let pool = pool.clone();
        let me = self.clone();
        Some(tokio::spawn(async move {
            loop {
                let listener = async {
                    let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    l.listen(crate::store::audit::AUDIT_CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                let mut listener = match listener.await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "permission notifications not heard; trying again");
                        me.catch_up_all().await;
                        tokio::time::sleep(CLUSTER_POLL).await;
                        continue;
                    }
                };
                me.catch_up_all().await;
                loop {
                    match tokio::time::timeout(CLUSTER_POLL, listener.try_recv()).await {
                        // A notification, or a while without one.
                        Ok(Ok(Some(_))) | Err(_) => me.catch_up_all().await,
                        Ok(Ok(None)) => {
                            tracing::warn!(
                                "permission notifications' connection lost; reconnecting"
                            );
                            break;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "permission notifications failed; reconnecting");
                            break;
                        }
                    }
                }
            }
        }))
    }

    /// Reads the trail past the last position this node heard of and brings each pair it
    /// names up to date, each on a task of its own (a pair held by a call here waits for
    /// its turn without holding the others up).
    async fn catch_up_all(&self) {
        let tail = self.inner.tail.load(std::sync::atomic::Ordering::Relaxed);
        let filter = AuditFilter {
            after_seq: Some(tail),
            limit: 10_000,
            ..AuditFilter::default()
        };
        let records = match self.inner.store.audit_records(&filter).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "the audit trail could not be read; permission states as last known");
                return;
            }
        };
        let Some(last) = records.last().map(|r| r.seq) else {
            return;
        };
        self.inner
            .tail
            .fetch_max(last, std::sync::atomic::Ordering::Relaxed);
        let mut pairs: Vec<(Pair, i64)> = Vec::new();
        for r in &records {
            let pair = Pair::of_record(&r.entry);
            match pairs.iter_mut().find(|(p, _)| *p == pair) {
                Some((_, seq)) => *seq = r.seq,
                None => pairs.push((pair, r.seq)),
            }
        }
        for (pair, seq) in pairs {
            let known = self
                .inner
                .pairs
                .get(&pair)
                .and_then(|slot| slot.try_lock().ok().map(|c| c.seq >= seq && !c.stale))
                .unwrap_or(false);
            if known {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                drop(me.current(&pair).await);
            });
        }
    }

    /// Settles the call attempts node `node` reserved and left open (the node was lost):
    /// each by the last stage the trail shows, as that node would at its restart
    /// ([`Stage::settled_at_restart`]), with a record naming the node. The number settled.
    pub async fn settle_node(&self, node: &str) -> Result<usize, StoreError> {
        let since = now_ms() - 2 * crate::permission::state::DAY_MS;
        let kind = Event::CallReserved {
            call_id: None,
            staged: true,
        }
        .name();
        let reserved = self.inner.store.records_of_node(kind, node, since).await?;
        let mut settled = 0;
        for r in reserved {
            let Ok(detail) = serde_json::from_str::<Value>(&r.entry.detail) else {
                continue;
            };
            if detail.get("node").and_then(Value::as_str) != Some(node) {
                continue;
            }
            let Some(call_id) = detail.get("call_id").and_then(Value::as_str) else {
                continue;
            };
            let pair = Pair::of_record(&r.entry);
            // Most are settled long ago: only the attempts still open as last known are held.
            if self.current(&pair).await.state.stage(call_id).is_none() {
                continue;
            }
            let mut held = self.lock(&pair).await?;
            let Some(stage) = held.stage(call_id) else {
                self.release(held).await?;
                continue;
            };
            let (outcome, why) = stage.settled_at_restart();
            let mut context = Map::new();
            context.insert("node_lost".into(), json!(node));
            context.insert("settled_by".into(), json!(self.inner.node));
            context.insert("settled_at_start".into(), json!(why));
            context.insert("stage".into(), json!(stage));
            let event = Event::CallFinished {
                outcome,
                call_id: Some(call_id.to_string()),
            };
            self.commit(&pair, &mut held, Actor::Switch, event, context)
                .await?;
            self.release(held).await?;
            settled += 1;
        }
        Ok(settled)
    }

    /// Pairs on the do-not-call list (of one business number, or all).
    pub async fn dnc_list(&self, business_number: Option<&str>) -> Vec<Pair> {
        let slots: Vec<(Pair, Arc<tokio::sync::Mutex<Cached>>)> = self
            .inner
            .pairs
            .iter()
            .filter(|e| business_number.is_none_or(|b| e.key().business_number == b))
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut out = Vec::new();
        for (pair, slot) in slots {
            if slot.lock().await.state.dnc {
                out.push(pair);
            }
        }
        out.sort();
        out
    }

    /// Records that the locked pair's grant lapsed at `now`, then applies it.
    async fn expire(&self, pair: &Pair, held: &mut Locked, now: i64) -> Result<(), StoreError> {
        let event = Event::Expired;
        self.write(
            pair,
            held,
            Actor::Switch,
            now,
            event.name(),
            Some(&event),
            Map::new(),
        )
        .await?;
        self.apply_all(pair, held, now, std::slice::from_ref(&event));
        Ok(())
    }

    /// Applies `events` (written together) to a locked pair and moves the gauge of grants
    /// in force. When they end the pair's permission (do-not-call, revocation, withdrawal,
    /// expiry), the reason a call would now be refused is announced, once, to
    /// [`cutoffs`](Self::cutoffs) subscribers, so calls still waiting for the customer are
    /// cancelled.
    fn apply_all(&self, pair: &Pair, state: &mut PairState, at: i64, events: &[Event]) {
        let was = active(state);
        // The first event that ends the permission gives the reason (a revocation that
        // puts the customer on the list is heard as a revocation).
        let mut cut_off = None;
        for event in events {
            state.apply(&self.inner.rules, at, event);
            let ends = matches!(
                event,
                Event::DncAdded { .. } | Event::Revoked | Event::Withdrawn | Event::Expired
            );
            if ends && cut_off.is_none() {
                cut_off = state.check_call(&self.inner.rules, at).err();
            }
        }
        let delta = i64::from(active(state)) - i64::from(was);
        if delta != 0 {
            metrics::gauge!(telemetry::PERMISSION_GRANTS_ACTIVE).increment(delta as f64);
        }
        if let Some(blocked) = cut_off {
            // Nobody listening (no node running) is fine.
            let _ = self.inner.cutoffs.send((pair.clone(), blocked));
        }
    }

    /// Whether the pair's permission has ended since a call reserved it (do-not-call,
    /// revocation, withdrawal, expiry): the reason, so the call is not placed.
    pub async fn cut_off(&self, pair: &Pair) -> Option<Blocked> {
        let cached = self.current(pair).await;
        let state = &cached.state;
        if state.dnc {
            return Some(Blocked::DoNotCall);
        }
        if state.expiry_due(now_ms()) {
            return Some(Blocked::Expired);
        }
        match state.status {
            Status::Granted => None,
            Status::Revoked => Some(Blocked::Revoked),
            Status::Withdrawn => Some(Blocked::Withdrawn),
            Status::Expired => Some(Blocked::Expired),
            _ => Some(Blocked::NoPermission),
        }
    }

    /// Pairs whose permission just ended, with the reason a call would now be refused.
    pub fn cutoffs(&self) -> tokio::sync::broadcast::Receiver<(Pair, Blocked)> {
        self.inner.cutoffs.subscribe()
    }
}

/// Records Meta's permission replies for the webhook ingress (before it answers 200).
pub struct ReplyRecorder {
    permissions: Permissions,
    /// Display numbers by Meta's phone number id.
    numbers: std::collections::HashMap<String, String>,
}

impl ReplyRecorder {
    /// Records replies for `numbers` into `permissions`.
    pub fn new(permissions: Permissions, numbers: &[crate::config::BusinessNumber]) -> Self {
        ReplyRecorder {
            permissions,
            numbers: numbers
                .iter()
                .map(|n| (n.phone_number_id.clone(), n.display_number.clone()))
                .collect(),
        }
    }

    async fn apply(&self, reply: crate::meta::webhook::PermissionReply) -> Result<(), String> {
        use crate::meta::webhook::{PermissionResponse, ResponseSource};
        let Some(number) = self.numbers.get(&reply.business.phone_number_id) else {
            tracing::warn!(phone_number_id = %reply.business.phone_number_id, "permission reply for a number this switch does not serve; ignored");
            return Ok(());
        };
        let wa_id = reply
            .contact
            .as_ref()
            .map(|c| c.wa_id.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| reply.from.clone());
        // Meta's wa_id is the number already; normalised like every other door, but a
        // number the phone metadata does not know is kept as given, never dropped (a
        // revocation must not be lost).
        let wa_id = crate::number::e164_or_raw(&wa_id);
        let pair = Pair::new(number, &wa_id);
        let automatic = reply.source == ResponseSource::Automatic;
        let actor = if automatic {
            Actor::Meta
        } else {
            Actor::Customer
        };
        let mut context = Map::new();
        if let Some(c) = &reply.context_id {
            context.insert("context_id".into(), json!(c));
        }
        let event = match reply.response {
            PermissionResponse::Accept => Event::Granted {
                permanent: reply.is_permanent,
                expires_at: reply
                    .expires_at
                    .and_then(|s| i64::try_from(s).ok())
                    .map(|s| s.saturating_mul(1000)),
            },
            // A reply to our request declines it; without one (from the business
            // profile, or Meta after unanswered calls) it takes a grant away.
            PermissionResponse::Reject if reply.context_id.is_some() && !automatic => {
                Event::Declined
            }
            PermissionResponse::Reject => Event::Revoked,
            PermissionResponse::Other(ref other) => {
                tracing::warn!(response = %other, "permission reply not understood; ignored");
                return Ok(());
            }
        };
        // A customer taking permission back opts out: the do-not-call list holds them
        // until the business removes the entry. Both are written in one transaction.
        let mut events = vec![event];
        if events[0] == Event::Revoked && !automatic {
            events.push(Event::DncAdded {
                reason: "customer revoked call permission".into(),
            });
        }
        let meta_timestamp = reply.timestamp.and_then(|t| i64::try_from(t).ok());
        let fresh = self
            .permissions
            .reply(
                &pair,
                &reply.message_id,
                &events,
                actor,
                meta_timestamp,
                context,
            )
            .await
            .map_err(|e| e.to_string())?;
        if fresh && events.len() > 1 {
            metrics::counter!(telemetry::DNC_ADDED_TOTAL, "actor" => "customer").increment(1);
        }
        Ok(())
    }
}

impl crate::meta::ingress::ReplySink for ReplyRecorder {
    fn record(
        &self,
        reply: crate::meta::webhook::PermissionReply,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(self.apply(reply))
    }
}

/// Meta's own view of a permission, asked before dialling when
/// `[permissions] authoritative_check` is on: Meta saying there is none, or that it has
/// lapsed, refuses the call even when the switch's records allow it.
pub async fn authoritative_check(
    graph: &crate::meta::graph::GraphClient,
    phone_number_id: &str,
    wa_id: &str,
    now: i64,
) -> Result<(), Blocked> {
    match graph.call_permission(phone_number_id, wa_id).await {
        Ok(p) => match p.status.as_str() {
            "permanent" => Ok(()),
            "temporary" => match p.expires_at {
                Some(at) if i64::try_from(at).unwrap_or(i64::MAX).saturating_mul(1000) <= now => {
                    Err(Blocked::Expired)
                }
                _ => Ok(()),
            },
            _ => Err(Blocked::MetaRefused),
        },
        // Meta cannot be asked: the switch's own records stand, and the refusal or the
        // call says the rest.
        Err(e) => {
            tracing::warn!(error = %e, "Meta's call permission could not be checked; the switch's records decide");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StoreConfig, StoreUrl};
    use crate::permission::state::DAY_MS;

    async fn service(rules: Rules) -> Permissions {
        let store = Store::open(&StoreConfig {
            url: StoreUrl::Sqlite(":memory:".into()),
            max_connections: 1,
            cdr_batch_size: 10,
            cdr_flush_interval: std::time::Duration::from_millis(50),
        })
        .await
        .expect("store");
        Permissions::load(store, rules, "node-a")
            .await
            .expect("load")
    }

    fn pair() -> Pair {
        Pair::new("15551112222", "4915100000001")
    }

    async fn grant(p: &Permissions, expires_at: Option<i64>) {
        p.record(
            &pair(),
            Actor::Customer,
            Event::Granted {
                permanent: expires_at.is_none(),
                expires_at,
            },
            Map::new(),
        )
        .await
        .expect("grant");
    }

    #[tokio::test]
    async fn a_lapsing_grant_cancels_the_calls_waiting_on_it() {
        let p = service(Rules::meta()).await;
        let mut cutoffs = p.cutoffs();
        grant(&p, Some(now_ms() + 3_600_000)).await;
        let _held = p
            .reserve_call(&pair(), "c1", Ok(()))
            .await
            .expect("reserved");
        // The sweep two hours on.
        assert_eq!(
            p.sweep_expired(now_ms() + 7_200_000).await.expect("sweep"),
            1
        );
        assert_eq!(cutoffs.try_recv().ok(), Some((pair(), Blocked::Expired)));
    }

    #[tokio::test]
    async fn an_opt_out_is_announced_once_and_a_grant_older_than_it_is_superseded() {
        let p = service(Rules::meta()).await;
        let mut cutoffs = p.cutoffs();
        grant(&p, None).await;
        let before_opt_out = now_ms() / 1000 - 5;
        p.record(
            &pair(),
            Actor::Business,
            Event::DncAdded {
                reason: "asked by phone".into(),
            },
            Map::new(),
        )
        .await
        .expect("dnc");
        assert_eq!(cutoffs.try_recv().ok(), Some((pair(), Blocked::DoNotCall)));
        assert!(cutoffs.try_recv().is_err(), "announced twice");
        // A retried delivery of a grant given before the opt-out changes nothing…
        let events = [Event::Granted {
            permanent: true,
            expires_at: None,
        }];
        let applied = p
            .reply(
                &pair(),
                "wamid.late",
                &events,
                Actor::Customer,
                Some(before_opt_out),
                Map::new(),
            )
            .await
            .expect("reply");
        assert!(!applied);
        p.record(&pair(), Actor::Business, Event::DncRemoved, Map::new())
            .await
            .expect("dnc removed");
        let view = p.view(&pair()).await;
        assert_eq!(view.status, Status::Withdrawn, "{view:?}");
        // …while one the customer gives after it is a new grant.
        let applied = p
            .reply(
                &pair(),
                "wamid.new",
                &events,
                Actor::Customer,
                Some(now_ms() / 1000 + 1),
                Map::new(),
            )
            .await
            .expect("reply");
        assert!(applied);
        assert_eq!(p.view(&pair()).await.status, Status::Granted);
    }

    #[tokio::test]
    async fn an_attempt_ended_without_a_known_outcome_is_settled_by_its_stage() {
        let p = service(Rules::strict()).await;
        grant(&p, Some(now_ms() + DAY_MS)).await;
        // Never dialled: given back.
        let r = p.reserve_call(&pair(), "c1", Ok(())).await.expect("c1");
        p.finish_call(r, None, Map::new()).await.expect("finish");
        assert_eq!(p.view(&pair()).await.remaining.calls_on_grant, Some(1));
        // Dialled: Meta may have placed it, so it is used.
        let r = p.reserve_call(&pair(), "c2", Ok(())).await.expect("c2");
        assert!(p.dialled(&pair(), "c2").await.expect("dialled"));
        p.finish_call(r, None, Map::new()).await.expect("finish");
        let view = p.view(&pair()).await;
        assert_eq!(
            (view.calls_used, view.calls_in_progress),
            (1, 0),
            "{view:?}"
        );
        // Meta is never asked for an attempt settled already.
        assert!(!p.dialled(&pair(), "c1").await.expect("dialled"));
    }
}
