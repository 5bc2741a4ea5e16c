//! The registry of live calls: call id → the call's supervisor.
//!
//! Removing a call from the registry is the one act that closes it out: whoever removes the
//! entry (the call supervisor when it ends, or the root supervisor when a call supervisor
//! died) writes the call's CDR. A `DashMap` removal succeeds for exactly one caller, so a call
//! gets exactly one CDR however it ends. The remover holds a [`Closing`] until the CDR is
//! handed to the writer: until then the registry does not count as empty for a node that
//! waits for its calls to end, so no CDR is left behind at shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{ActorId, ActorRef};
use tokio::sync::Notify;

use super::leg::LegState;
use super::supervisor::CallMsg;
use super::{CallId, CallOffer, CallSnapshot, LegRole};
use crate::telemetry;

/// Most Meta call ids whose early events are kept.
pub(crate) const EARLY_MAX: usize = 1024;
/// How long early events are kept for a call id no call claims.
pub(crate) const EARLY_TTL: Duration = Duration::from_secs(30);

/// A live call as the registry knows it: enough to write its CDR if its supervisor dies.
#[derive(Debug, Clone)]
pub struct CallEntry {
    /// The call's supervisor.
    pub actor: ActorRef<CallMsg>,
    /// What was offered.
    pub offer: CallOffer,
    /// A business-initiated call's hold on the customer's permission, settled from the
    /// call's CDR.
    pub permit: Option<super::whatsapp::permit::Permit>,
    /// When the call reached the switch (Unix ms).
    pub offered_at: i64,
    /// When the called party rang (Unix ms).
    pub ringing_at: Option<i64>,
    /// When the called party answered (Unix ms).
    pub answered_at: Option<i64>,
    /// Meta's ids of WhatsApp users the call dialled (besides its own `wa_call_id`).
    pub dialled_wa_call_ids: Vec<String>,
    /// The WhatsApp side's latest state, as its leg reported it to the supervisor.
    pub whatsapp_leg: Option<LegState>,
    /// The business side's latest state (its leg, or its SIP bridge).
    pub business_leg: Option<LegState>,
}

/// A removed call whose CDR is not handed to the writer yet; drop it once it is.
#[derive(Debug)]
#[must_use = "the registry counts the call as closing until this is dropped"]
pub struct Closing {
    inner: Arc<Inner>,
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.inner.closing.fetch_sub(1, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
    }
}

/// Live calls of this node. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct CallRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    calls: DashMap<CallId, CallEntry>,
    by_actor: DashMap<ActorId, CallId>,
    /// Meta's call id → the call (webhooks name calls by it).
    by_wa_call: DashMap<String, CallId>,
    /// Events for Meta call ids no call claims yet (a webhook can overtake the Graph API
    /// answer that names the call), with when they came.
    early: DashMap<String, (std::time::Instant, Vec<super::whatsapp::WaEvent>)>,
    draining: AtomicBool,
    /// Where the calls this node owns are registered for the cluster (`call::cluster`).
    owners: std::sync::OnceLock<tokio::sync::mpsc::Sender<super::cluster::Claim>>,
    /// Calls removed whose CDR is not handed to the writer yet.
    closing: AtomicUsize,
    changed: Notify,
}

impl CallRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the calls this node owns, from now on, through `claims` (a cluster).
    pub(crate) fn watch_owners(&self, claims: tokio::sync::mpsc::Sender<super::cluster::Claim>) {
        if self.inner.owners.set(claims).is_err() {
            tracing::warn!("call ownership is registered once; the first register stands");
        }
    }

    fn claim(&self, claim: super::cluster::Claim) {
        if let Some(owners) = self.inner.owners.get() {
            if let Err(e) = owners.try_send(claim) {
                tracing::warn!(error = %e, "call ownership not registered: the register's queue is full");
            }
        }
    }

    /// Adds a call.
    pub fn insert(&self, id: CallId, entry: CallEntry) {
        self.inner.by_actor.insert(entry.actor.get_id(), id.clone());
        let mut keys = vec![crate::store::cluster::call_key(id.as_str())];
        if let Some(wa) = &entry.offer.wa_call_id {
            self.inner.by_wa_call.insert(wa.clone(), id.clone());
            keys.push(crate::store::cluster::wa_key(wa));
        }
        if self.inner.owners.get().is_some() {
            self.claim(super::cluster::Claim::Own {
                call_id: id.to_string(),
                keys,
                detail: Some(super::cluster::CallDetail::of(&entry)),
            });
        }
        if self.inner.calls.insert(id, entry).is_none() {
            metrics::gauge!(telemetry::CALLS_ACTIVE).increment(1.0);
        }
        self.inner.changed.notify_waiters();
    }

    /// Removes a call; `Some` for exactly one caller, who then owns writing its CDR and
    /// drops the [`Closing`] once the CDR is handed to the writer.
    pub fn remove(&self, id: &CallId) -> Option<(CallEntry, Closing)> {
        let (_, entry) = self.inner.calls.remove(id)?;
        self.inner.closing.fetch_add(1, Ordering::SeqCst);
        let closing = Closing {
            inner: Arc::clone(&self.inner),
        };
        self.inner.by_actor.remove(&entry.actor.get_id());
        let mut keys = vec![crate::store::cluster::call_key(id.as_str())];
        for wa in entry
            .offer
            .wa_call_id
            .iter()
            .chain(&entry.dialled_wa_call_ids)
        {
            self.inner.by_wa_call.remove_if(wa, |_, call| call == id);
            keys.push(crate::store::cluster::wa_key(wa));
        }
        self.claim(super::cluster::Claim::Release(keys));
        metrics::gauge!(telemetry::CALLS_ACTIVE).decrement(1.0);
        self.inner.changed.notify_waiters();
        Some((entry, closing))
    }

    /// Removes the call whose supervisor is `actor`, if it is still registered.
    pub fn remove_by_actor(&self, actor: ActorId) -> Option<(CallId, CallEntry, Closing)> {
        let (_, id) = self.inner.by_actor.remove(&actor)?;
        let (entry, closing) = self.remove(&id)?;
        Some((id, entry, closing))
    }

    /// The supervisor of a live call.
    pub fn get(&self, id: &CallId) -> Option<ActorRef<CallMsg>> {
        self.inner.calls.get(id).map(|e| e.actor.clone())
    }

    /// Names live call `id` by Meta's `wa_call_id` (learned after the call started); the
    /// events that came for it before are handed back in order.
    pub fn set_wa_call_id(&self, id: &CallId, wa_call_id: &str) -> Vec<super::whatsapp::WaEvent> {
        if let Some(mut entry) = self.inner.calls.get_mut(id) {
            entry.offer.wa_call_id = Some(wa_call_id.to_string());
            self.inner
                .by_wa_call
                .insert(wa_call_id.to_string(), id.clone());
            self.claim(super::cluster::Claim::Own {
                call_id: id.to_string(),
                keys: vec![crate::store::cluster::wa_key(wa_call_id)],
                detail: None,
            });
        }
        self.inner
            .early
            .remove(wa_call_id)
            .map(|(_, (_, events))| events)
            .unwrap_or_default()
    }

    /// Names live call `id` also by the Meta call id of a WhatsApp user it dialled; the
    /// events that came for it before are handed back in order.
    pub fn add_dialled_wa_call_id(
        &self,
        id: &CallId,
        wa_call_id: &str,
    ) -> Vec<super::whatsapp::WaEvent> {
        if let Some(mut entry) = self.inner.calls.get_mut(id) {
            entry.dialled_wa_call_ids.push(wa_call_id.to_string());
            self.inner
                .by_wa_call
                .insert(wa_call_id.to_string(), id.clone());
            self.claim(super::cluster::Claim::Own {
                call_id: id.to_string(),
                keys: vec![crate::store::cluster::wa_key(wa_call_id)],
                detail: None,
            });
        }
        self.take_early(wa_call_id)
    }

    /// The events kept for a Meta call id before a call claimed it, in order.
    pub fn take_early(&self, wa_call_id: &str) -> Vec<super::whatsapp::WaEvent> {
        let Some((_, (_, events))) = self.inner.early.remove(wa_call_id) else {
            return Vec::new();
        };
        self.publish_early();
        events
    }

    fn publish_early(&self) {
        metrics::gauge!(telemetry::STATE_ENTRIES, "table" => "meta_early_events")
            .set(self.inner.early.len() as f64);
    }

    /// Keeps an event for a Meta call id no call claims yet (bounded: at most
    /// [`EARLY_MAX`] ids, none older than [`EARLY_TTL`]).
    pub fn hold_early(&self, wa_call_id: &str, event: super::whatsapp::WaEvent) {
        let now = std::time::Instant::now();
        // Events of calls that ended before their webhooks arrived land here too: what is
        // past its time goes at each new one (the table is small: a scan is cheap).
        self.inner
            .early
            .retain(|_, (at, _)| now.duration_since(*at) < EARLY_TTL);
        if self.inner.early.len() >= EARLY_MAX {
            self.publish_early();
            return;
        }
        {
            let mut slot = self
                .inner
                .early
                .entry(wa_call_id.to_string())
                .or_insert_with(|| (now, Vec::new()));
            if slot.1.len() < 16 {
                slot.1.push(event);
            }
        }
        self.publish_early();
    }

    /// Notes when call `id` rang.
    pub fn mark_ringing(&self, id: &CallId, at: i64) {
        if let Some(mut entry) = self.inner.calls.get_mut(id) {
            entry.ringing_at.get_or_insert(at);
        }
    }

    /// Notes when call `id` was answered (`None`: the answer was taken back, the customer
    /// never connected).
    pub fn mark_answered(&self, id: &CallId, at: Option<i64>) {
        if let Some(mut entry) = self.inner.calls.get_mut(id) {
            entry.answered_at = at;
        }
        if let Some(at) = at {
            self.claim(super::cluster::Claim::Answered {
                key: crate::store::cluster::call_key(id.as_str()),
                at,
            });
        }
    }

    /// Notes the state a side of call `id` reported.
    pub fn mark_leg(&self, id: &CallId, role: LegRole, state: LegState) {
        if let Some(mut entry) = self.inner.calls.get_mut(id) {
            match role {
                LegRole::WhatsApp => entry.whatsapp_leg = Some(state),
                LegRole::Business => entry.business_leg = Some(state),
            }
        }
    }

    /// The live calls as the registry knows them, without asking any call: what, when,
    /// and each side's state (no media: that is the call's own snapshot). Each entry is
    /// read under its shard's read lock for as long as a copy takes.
    pub fn views(&self) -> Vec<CallSnapshot> {
        self.inner
            .calls
            .iter()
            .map(|e| CallSnapshot {
                call_id: e.key().clone(),
                offer: e.offer.clone(),
                offered_at: e.offered_at,
                ringing_at: e.ringing_at,
                answered_at: e.answered_at,
                whatsapp_leg: e.whatsapp_leg,
                business_leg: e.business_leg,
                media: None,
            })
            .collect()
    }

    /// The business number of live call `id` (`Some(None)`: a call without one).
    pub fn business_number(&self, id: &CallId) -> Option<Option<String>> {
        self.inner
            .calls
            .get(id)
            .map(|e| e.offer.business_number.clone())
    }

    /// Business-initiated calls to customer `wa_id` of `business_number` not answered yet.
    pub fn waiting_business_calls(&self, business_number: &str, wa_id: &str) -> Vec<CallId> {
        self.inner
            .calls
            .iter()
            .filter(|e| {
                let o = &e.value().offer;
                e.value().answered_at.is_none()
                    && o.direction == crate::store::Direction::BusinessInitiated
                    && o.business_number.as_deref() == Some(business_number)
                    && o.customer_wa_id.as_deref() == Some(wa_id)
            })
            .map(|e| e.key().clone())
            .collect()
    }

    /// The live call Meta knows as `wa_call_id`.
    pub fn by_wa_call_id(&self, wa_call_id: &str) -> Option<CallId> {
        self.inner
            .by_wa_call
            .get(wa_call_id)
            .map(|e| e.value().clone())
    }

    /// Ids of every live call.
    pub fn ids(&self) -> Vec<CallId> {
        self.inner.calls.iter().map(|e| e.key().clone()).collect()
    }

    /// Number of live calls.
    pub fn len(&self) -> usize {
        self.inner.calls.len()
    }

    /// No live call.
    pub fn is_empty(&self) -> bool {
        self.inner.calls.is_empty()
    }

    /// Refuse new calls from now on.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// The node is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// No live call, and every ended call's CDR handed to the writer.
    pub fn settled(&self) -> bool {
        self.is_empty() && self.inner.closing.load(Ordering::SeqCst) == 0
    }

    /// Waits until no call is left and every CDR is handed to the writer, or `timeout`
    /// passes; true when settled.
    pub async fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            if self.settled() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.settled();
            }
        }
    }
}
