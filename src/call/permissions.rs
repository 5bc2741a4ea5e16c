//! The permission service: the live state of every (business number, customer) pair, kept
//! in step with the audit trail.
//!
//! Every change is an [`Event`] written to the audit trail first and applied only once the
//! write is committed, under the pair's lock: what the service acknowledges is in the
//! trail, and a restart rebuilds the same states by applying the trail again
//! ([`Permissions::load`]). A call attempt checks and reserves under that lock, so two
//! simultaneous attempts on a one-call permission cannot both pass.

use std::collections::HashSet;
use std::sync::{Arc, Mutex as StdMutex};

use dashmap::DashMap;
use serde_json::{json, Map, Value};

use super::now_ms;
use crate::permission::audit::{AuditEntry, AuditRecord};
use crate::permission::state::{
    Actor, AttemptOutcome, Blocked, Event, PairState, Remaining, RequestRefused, Rules, Stage,
    Status,
};
use crate::store::audit::{AuditFilter, AuditRepository};
use crate::store::{Store, StoreError};
use crate::telemetry;

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

struct Inner {
    store: Store,
    rules: Rules,
    pairs: DashMap<Pair, Arc<tokio::sync::Mutex<PairState>>>,
    /// Meta's reply message ids already applied (a redelivered reply is not a new grant).
    replies: StdMutex<HashSet<String>>,
    /// Meta's timestamp of the last reply applied per pair (an older one is superseded).
    last_reply: DashMap<Pair, i64>,
    /// Where ended permissions are announced.
    cutoffs: tokio::sync::broadcast::Sender<(Pair, Blocked)>,
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
    /// The service over `store`, its pairs rebuilt from the audit trail. Reservations left
    /// by calls that were in progress when the switch stopped are settled by the last
    /// stage the trail shows for them ([`Stage::settled_at_restart`]: never dialled is
    /// released, dialled counts as used, answered as connected), each with a record naming
    /// the call and why.
    pub async fn load(store: Store, rules: Rules) -> Result<Permissions, StoreError> {
        let service = Permissions {
            inner: Arc::new(Inner {
                store,
                rules,
                pairs: DashMap::new(),
                replies: StdMutex::new(HashSet::new()),
                last_reply: DashMap::new(),
                cutoffs: tokio::sync::broadcast::channel(1024).0,
            }),
        };
        let records = service
            .inner
            .store
            .walk_audit(&AuditFilter::default(), |r| {
                service.replay(r);
                std::ops::ControlFlow::Continue(())
            })
            .await?;
        let unsettled: Vec<(Pair, Option<String>, Stage)> = service
            .inner
            .pairs
            .iter()
            .flat_map(|e| {
                let pair = e.key().clone();
                let attempts = e
                    .value()
                    .try_lock()
                    .map(|s| s.attempts().to_vec())
                    .unwrap_or_default();
                attempts
                    .into_iter()
                    .map(move |a| (pair.clone(), a.call_id, a.stage))
            })
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
            .filter(|e| e.value().try_lock().is_ok_and(|s| active(&s)))
            .count();
        metrics::gauge!(telemetry::PERMISSION_GRANTS_ACTIVE).set(n as f64);
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

    fn slot(&self, pair: &Pair) -> Arc<tokio::sync::Mutex<PairState>> {
        self.inner
            .pairs
            .entry(pair.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(PairState::new())))
            .clone()
    }

    /// Applies one record of the trail (at load).
    fn replay(&self, r: &AuditRecord) {
        let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(&r.entry.detail) else {
            return;
        };
        let pair = Pair::of_record(&r.entry);
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
        // Records of an event written as a plain note (`call_connected` once was) are the
        // event their kind names; other notes (`call_blocked`, ...) name no event.
        if !map.contains_key("event") {
            map.insert("event".into(), json!(r.entry.kind));
        }
        let Ok(event) = serde_json::from_value::<Event>(Value::Object(map)) else {
            return;
        };
        let slot = self.slot(&pair);
        let Ok(mut state) = slot.try_lock() else {
            return;
        };
        state.apply(&self.inner.rules, r.entry.at, &event);
    }

    fn replies_mut(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
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
        let slot = self.slot(pair);
        let mut state = slot.lock().await;
        let at = now_ms();
        let voids = matches!(event, Event::DncAdded { .. }) && active(&state);
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
        let mut written = self.inner.store.append_audit(&entries).await?;
        for (e, _) in &events {
            self.apply(pair, &mut state, at, e);
        }
        written
            .pop()
            .ok_or_else(|| StoreError::Corrupt("audit append wrote nothing".into()))
    }

    async fn write(
        &self,
        pair: &Pair,
        actor: Actor,
        at: i64,
        kind: &str,
        event: Option<&Event>,
        context: Map<String, Value>,
    ) -> Result<AuditRecord, StoreError> {
        let entry = entry(pair, actor, at, kind, event, context);
        let mut written = self.inner.store.append_audit(&[entry]).await?;
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
        let slot = self.slot(pair);
        let mut state = slot.lock().await;
        if self.replies_mut().contains(message_id) {
            return Ok(false);
        }
        context.insert("message_id".into(), json!(message_id));
        if let Some(ts) = meta_timestamp {
            context.insert("meta_timestamp".into(), json!(ts));
        }
        let at = now_ms();
        let last = self.inner.last_reply.get(pair).map(|e| *e.value());
        if let (Some(ts), Some(last)) = (meta_timestamp, last) {
            if ts < last {
                self.write(pair, actor, at, "reply_superseded", None, context)
                    .await?;
                self.replies_mut().insert(message_id.to_string());
                return Ok(false);
            }
        }
        let entries: Vec<AuditEntry> = events
            .iter()
            .map(|e| entry(pair, actor, at, e.name(), Some(e), context.clone()))
            .collect();
        self.inner.store.append_audit(&entries).await?;
        for e in events {
            self.apply(pair, &mut state, at, e);
        }
        self.replies_mut().insert(message_id.to_string());
        if let Some(ts) = meta_timestamp {
            self.inner.last_reply.insert(pair.clone(), ts);
        }
        let outcome = match state.status {
            Status::Granted => "granted",
            Status::Declined => "declined",
            _ => "revoked",
        };
        drop(state);
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
        let slot = self.slot(pair);
        let mut state = slot.lock().await;
        let now = now_ms();
        let verdict = policy
            .and_then(|()| {
                if state.dnc {
                    Err(Blocked::DoNotCall)
                } else {
                    Ok(())
                }
            })
            .map_err(PermissionError::Blocked)
            .and_then(|()| {
                state
                    .check_request(&self.inner.rules, now)
                    .map_err(PermissionError::Refused)
            });
        if let Err(refused) = verdict {
            let reason = match &refused {
                PermissionError::Blocked(b) => {
                    let mut context = Map::new();
                    context.insert("reason".into(), json!(b.as_str()));
                    context.insert("purpose".into(), json!(purpose));
                    self.write(pair, Actor::Switch, now, "request_blocked", None, context)
                        .await?;
                    b.as_str()
                }
                PermissionError::Refused(r) => r.as_str(),
                _ => "refused",
            };
            drop(state);
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
                Actor::Business,
                now,
                event.name(),
                Some(&event),
                context,
            )
            .await;
        // Sent either way: the limits count it.
        self.apply(pair, &mut state, now, &event);
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
        let slot = self.slot(pair);
        let mut state = slot.lock().await;
        let now = now_ms();
        if state.expiry_due(now) {
            self.expire(pair, &mut state, now).await?;
        }
        let verdict = policy.and_then(|()| state.check_call(&self.inner.rules, now));
        let mut context = Map::new();
        context.insert("call_id".into(), json!(call_id));
        match verdict {
            Err(blocked) => {
                context.insert("reason".into(), json!(blocked.as_str()));
                self.write(pair, Actor::Switch, now, "call_blocked", None, context)
                    .await?;
                drop(state);
                metrics::counter!(telemetry::CALLS_BLOCKED_TOTAL, "reason" => blocked.as_str())
                    .increment(1);
                Err(PermissionError::Blocked(blocked))
            }
            Ok(()) => {
                let event = Event::CallReserved {
                    call_id: Some(call_id.to_string()),
                };
                self.write(
                    pair,
                    Actor::Business,
                    now,
                    event.name(),
                    Some(&event),
                    context,
                )
                .await?;
                self.apply(pair, &mut state, now, &event);
                Ok(Reservation {
                    pair: pair.clone(),
                    call_id: call_id.to_string(),
                })
            }
        }
    }

    /// Ends a reserved attempt: a connected call uses the permission, an unanswered one
    /// counts toward automatic revocation, a failed one gives it back. `context` adds the
    /// call's duration, Meta's ids, the end cause.
    pub async fn finish_call(
        &self,
        reservation: Reservation,
        outcome: AttemptOutcome,
        context: Map<String, Value>,
    ) -> Result<AuditRecord, StoreError> {
        self.record(
            &reservation.pair,
            Actor::Switch,
            Event::CallFinished {
                outcome,
                call_id: Some(reservation.call_id),
            },
            context,
        )
        .await
    }

    /// Ends a reserved attempt whose outcome nobody saw (its call was lost before it was
    /// settled), by the last stage the trail shows, as a restart would
    /// ([`Stage::settled_at_restart`]): never dialled gives the permission back, anything
    /// later counts it used. `why` goes in the record.
    pub async fn abandon(
        &self,
        reservation: Reservation,
        why: &str,
    ) -> Result<AuditRecord, StoreError> {
        let stage = {
            let slot = self.slot(&reservation.pair);
            let state = slot.lock().await;
            state.stage(&reservation.call_id)
        };
        let (outcome, _) = stage.unwrap_or(Stage::Reserved).settled_at_restart();
        let mut context = Map::new();
        context.insert("end_cause".into(), json!(why));
        if let Some(stage) = stage {
            context.insert("stage".into(), json!(stage));
        }
        self.finish_call(reservation, outcome, context).await
    }

    /// Records that Meta is about to be asked to place the reserved attempt `call_id`
    /// (Graph `connect`). Called, and awaited, before the request is sent: an attempt the
    /// trail shows undialled is one Meta never heard of.
    pub async fn dialled(&self, pair: &Pair, call_id: &str) -> Result<AuditRecord, StoreError> {
        self.record(
            pair,
            Actor::Switch,
            Event::CallDialled {
                call_id: Some(call_id.to_string()),
            },
            Map::new(),
        )
        .await
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
        let slot = self.slot(pair);
        let state = slot.lock().await;
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
        let Some(slot) = self.inner.pairs.get(pair).map(|e| e.value().clone()) else {
            return Ok(false);
        };
        let mut state = slot.lock().await;
        if !state.requests_counted() {
            return Ok(false);
        }
        let event = Event::UserCallConnected {
            answered_at: Some(answered_at),
        };
        let record = self
            .write(
                pair,
                Actor::Customer,
                now_ms(),
                event.name(),
                Some(&event),
                context,
            )
            .await?;
        self.apply(pair, &mut state, record.entry.at, &event);
        Ok(true)
    }

    /// Records `expired` for every grant past its expiry at `now` (Meta sends no webhook
    /// when a temporary grant lapses): the trail says when each grant ended, and the
    /// gauge of grants in force drops. The number recorded.
    pub async fn sweep_expired(&self, now: i64) -> Result<usize, StoreError> {
        let slots: Vec<(Pair, Arc<tokio::sync::Mutex<PairState>>)> = self
            .inner
            .pairs
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut n = 0;
        for (pair, slot) in slots {
            let mut state = slot.lock().await;
            if !state.expiry_due(now) {
                continue;
            }
            self.expire(&pair, &mut state, now).await?;
            n += 1;
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

    /// Pairs on the do-not-call list (of one business number, or all).
    pub async fn dnc_list(&self, business_number: Option<&str>) -> Vec<Pair> {
        let slots: Vec<(Pair, Arc<tokio::sync::Mutex<PairState>>)> = self
            .inner
            .pairs
            .iter()
            .filter(|e| business_number.is_none_or(|b| e.key().business_number == b))
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut out = Vec::new();
        for (pair, slot) in slots {
            if slot.lock().await.dnc {
                out.push(pair);
            }
        }
        out.sort();
        out
    }

    /// Records that the locked pair's grant lapsed at `now`, then applies it.
    async fn expire(&self, pair: &Pair, state: &mut PairState, now: i64) -> Result<(), StoreError> {
        let event = Event::Expired;
        self.write(
            pair,
            Actor::Switch,
            now,
            event.name(),
            Some(&event),
            Map::new(),
        )
        .await?;
        self.apply(pair, state, now, &event);
        Ok(())
    }

    /// Applies `event` to a locked pair and moves the gauge of grants in force. An event
    /// that ends the pair's permission (do-not-call, revocation, withdrawal, expiry) is
    /// announced to [`cutoffs`](Self::cutoffs) subscribers, so calls still waiting for the
    /// customer are cancelled.
    fn apply(&self, pair: &Pair, state: &mut PairState, at: i64, event: &Event) {
        let was = active(state);
        let refused_before = state.check_call(&self.inner.rules, at).err();
        state.apply(&self.inner.rules, at, event);
        let delta = i64::from(active(state)) - i64::from(was);
        if delta != 0 {
            metrics::gauge!(telemetry::PERMISSION_GRANTS_ACTIVE).increment(delta as f64);
        }
        let ends = matches!(
            event,
            Event::DncAdded { .. } | Event::Revoked | Event::Withdrawn | Event::Expired
        );
        if ends {
            match state.check_call(&self.inner.rules, at) {
                // Announced once per reason: a withdrawal that follows a do-not-call entry
                // changes nothing a waiting call would hear.
                Err(blocked) if refused_before != Some(blocked) => {
                    // Nobody listening (no node running) is fine.
                    let _ = self.inner.cutoffs.send((pair.clone(), blocked));
                }
                _ => {}
            }
        }
    }

    /// Whether the pair's permission has ended since a call reserved it (do-not-call,
    /// revocation, withdrawal, expiry): the reason, so the call is not placed.
    pub async fn cut_off(&self, pair: &Pair) -> Option<Blocked> {
        let slot = self.slot(pair);
        let state = slot.lock().await;
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
        let wa_id = match crate::number::e164(&wa_id, None) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(message_id = %reply.message_id, error = %e, "permission reply without a usable user number; ignored");
                return Ok(());
            }
        };
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
