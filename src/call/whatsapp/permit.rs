//! Admission of business-initiated WhatsApp calls, and the permission each one holds.
//!
//! Before a call to a customer is admitted (a PBX's INVITE, an API callback),
//! [`BicContext::admit`] checks the policy (sanctioned regions, excluded countries,
//! optionally Meta's own permission check) and reserves the customer's permission
//! atomically. The [`Permit`] travels with the call: it writes each stage of the attempt to
//! the audit trail ahead of it (`call_dialled` before Graph `connect` is sent,
//! `call_connected` on the answer) and is settled from the call's CDR (connected: used;
//! unanswered: counted toward automatic revocation; failed: given back). A restart settles
//! what a crash left from the last stage recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Map};

use crate::config::BusinessNumber;
use crate::meta::outbox::Outbox;
use crate::permission::service::{Pair, PermissionError, Permissions, Reservation};
use crate::permission::{AttemptOutcome, Blocked};
use crate::store::{CallOutcome, Cdr};
use crate::telemetry;

/// What the switch needs to place business-initiated calls. Cheap to clone.
#[derive(Clone)]
pub(crate) struct BicContext {
    /// Meta's Graph API, and the outbox of actions Meta must get.
    pub outbox: Outbox,
    /// The permission service.
    pub permissions: Permissions,
    /// The business numbers the switch serves.
    pub numbers: Arc<Vec<BusinessNumber>>,
    /// Business numbers of these countries place no business-initiated calls.
    pub excluded_countries: Arc<Vec<String>>,
    /// Customers whose number starts with one of these calling codes are never called.
    pub sanctioned: Arc<Vec<String>>,
    /// Ask Meta's call-permission endpoint too before dialling.
    pub authoritative: bool,
}

impl std::fmt::Debug for BicContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BicContext")
            .field("numbers", &self.numbers.len())
            .field("authoritative", &self.authoritative)
            .finish_non_exhaustive()
    }
}

impl BicContext {
    /// The business number whose WhatsApp number is `user` (a SIP From user, in any
    /// international spelling: `+`, `00` or bare digits).
    pub(crate) fn number(&self, user: &str) -> Option<&BusinessNumber> {
        let d = crate::number::e164(user, None).ok()?;
        self.numbers.iter().find(|n| n.display_number == d)
    }

    /// Checks the policy and reserves `wa_id`'s permission for call `call_id` of
    /// `number`. A refusal is in the audit trail (`call_blocked`) and the metrics.
    pub(crate) async fn admit(
        &self,
        number: &BusinessNumber,
        wa_id: &str,
        call_id: &str,
    ) -> Result<Permit, PermissionError> {
        let mut policy = crate::permission::bic_policy(
            &number.country,
            wa_id,
            &self.excluded_countries,
            &self.sanctioned,
        );
        if policy.is_ok() && self.authoritative {
            policy = crate::permission::service::authoritative_check(
                self.outbox.graph(),
                &number.phone_number_id,
                wa_id,
                crate::clock::now_ms(),
            )
            .await;
        }
        let pair = Pair::new(&number.display_number, wa_id);
        let reservation = self
            .permissions
            .reserve_call(&pair, call_id, policy)
            .await?;
        Ok(Permit::new(self.permissions.clone(), reservation))
    }
}

/// A call's hold on its customer's permission, settled once from the call's CDR however
/// the call ends. Clones share the hold.
#[derive(Clone, Default)]
pub struct Permit {
    held: Arc<Held>,
    /// The `call_connected` record being written: the call's end is written after it.
    connected: Arc<Mutex<Option<tokio::sync::oneshot::Receiver<()>>>>,
    /// Meta certainly did not place the call (it refused `connect`, or never got it).
    not_placed: Arc<AtomicBool>,
}

/// The reservation a permit holds. Dropped still holding it (the call was lost before it
/// was settled, e.g. its start was abandoned), it settles by the attempt's last recorded
/// stage: given back if never dialled, counted used otherwise
/// ([`Permissions::finish_call`] with no outcome). Without a runtime (the process is ending) the next start
/// settles it the same way from the trail.
#[derive(Default)]
struct Held(Mutex<Option<(Permissions, Reservation)>>);

impl Drop for Held {
    fn drop(&mut self) {
        let held = self
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some((permissions, reservation)) = held else {
            return;
        };
        tracing::warn!(call_id = %reservation.call_id, "a call's permission was never settled; settling it by its last recorded stage");
        let call_id = reservation.call_id.clone();
        let mut context = Map::new();
        context.insert("end_cause".into(), json!("call lost before it was settled"));
        let background = permissions.background().clone();
        let settled = background.spawn("permit settlement", async move {
            let _ = permissions.finish_call(reservation, None, context).await;
        });
        if !settled {
            // The process is ending: the next start settles the attempt from the trail, by
            // the same rule.
            tracing::error!(
                %call_id,
                "no runtime left to settle the permission; the next start settles it from the trail"
            );
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

impl Permit {
    fn new(permissions: Permissions, reservation: Reservation) -> Permit {
        Permit {
            held: Arc::new(Held(Mutex::new(Some((permissions, reservation))))),
            connected: Arc::default(),
            not_placed: Arc::default(),
        }
    }

    fn take(&self) -> Option<(Permissions, Reservation)> {
        self.held
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn connected_write(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The pair held, while it is held.
    pub fn pair(&self) -> Option<Pair> {
        self.held
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, r)| r.pair.clone())
    }

    /// Whether the permission ended since it was reserved (see
    /// [`Permissions::cut_off`]); `None` also once settled.
    pub async fn cut_off(&self) -> Option<Blocked> {
        let held = self
            .held
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(p, r)| (p.clone(), r.pair.clone()));
        let (permissions, pair) = held?;
        permissions.cut_off(&pair).await
    }

    /// The holder's service, pair and call id, while it is held.
    fn holder(&self) -> Option<(Permissions, Pair, String)> {
        self.held
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(p, r)| (p.clone(), r.pair.clone(), r.call_id.clone()))
    }

    /// Meta is about to be asked to place the call: `call_dialled` goes in the audit
    /// trail first. An error means it is not recorded, and Meta must not be asked (a
    /// restart would take the attempt for one Meta never heard of).
    pub async fn dialled(&self) -> Result<(), String> {
        let (permissions, pair, call_id) = self
            .holder()
            .ok_or_else(|| "the call's permission is no longer held".to_string())?;
        match permissions.dialled(&pair, &call_id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("the call's permission was settled before Meta was asked".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Meta certainly did not place the call: it refused Graph `connect`, or never got
    /// it. Such a call gives its permission back however it ends.
    pub fn not_placed(&self) {
        self.not_placed.store(true, Ordering::SeqCst);
    }

    /// The customer answered: `call_connected` goes in the audit trail with Meta's call id.
    pub fn connected(&self, wa_call_id: Option<String>) {
        let Some((permissions, pair, call_id)) = self.holder() else {
            return;
        };
        let background = permissions.background().clone();
        let write = background.run("call_connected", async move {
            if let Err(e) = permissions
                .answered(&pair, &call_id, wa_call_id.as_deref())
                .await
            {
                tracing::error!(error = %e, %call_id, "call_connected not written to the audit trail");
            }
        });
        *self
            .connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(write);
    }

    /// Settles the hold from the call's CDR: a connected call uses the permission, one
    /// the customer declined or let ring counts toward automatic revocation, one that
    /// never reached Meta, failed in the switch or was cut off by it gives it back. Once.
    pub fn settle(&self, cdr: &Cdr) {
        let Some((permissions, reservation)) = self.take() else {
            return;
        };
        let outcome = if cdr.answered_at.is_some() {
            Some(AttemptOutcome::Connected)
        } else if cdr.wa_call_id.is_none() && !self.not_placed.load(Ordering::SeqCst) {
            // No id from Meta, and no refusal either: Meta may have placed the call (a
            // timeout, a lost connection) or never been asked. The trail's last stage
            // decides: given back only if Meta was never asked.
            None
        } else if cdr.wa_call_id.is_none()
            || cdr.failure.is_some()
            || cdr.hangup_by == crate::store::HangupParty::Switch
            || cdr.end_cause.starts_with("meta_failed")
        {
            // Never reached the customer, or the switch cut it off before an answer
            // (do-not-call, a revocation, shutdown): nothing the customer left unanswered.
            Some(AttemptOutcome::Failed)
        } else {
            Some(AttemptOutcome::Unanswered)
        };
        let result = match outcome {
            Some(AttemptOutcome::Connected) if cdr.outcome == CallOutcome::Answered => "completed",
            Some(AttemptOutcome::Connected) => "connected_failed",
            Some(AttemptOutcome::Unanswered) => "unanswered",
            None => "unknown",
            _ => "failed",
        };
        metrics::counter!(telemetry::BIC_ATTEMPTS_TOTAL, "result" => result).increment(1);
        let mut context = Map::new();
        context.insert("wa_call_id".into(), json!(cdr.wa_call_id));
        context.insert("sip_call_id".into(), json!(cdr.sip_call_id));
        context.insert("duration_ms".into(), json!(cdr.duration_ms));
        context.insert("end_cause".into(), json!(cdr.end_cause));
        context.insert("hangup_by".into(), json!(cdr.hangup_by.as_str()));
        if let Some(f) = &cdr.failure {
            context.insert("failure".into(), json!(f));
        }
        let call_id = reservation.call_id.clone();
        let connected = self.connected_write();
        let background = permissions.background().clone();
        background.spawn("permit settlement", async move {
            // In the trail the call connects before it ends.
            if let Some(write) = connected {
                let _ = write.await;
            }
            if let Err(e) = permissions.finish_call(reservation, outcome, context).await {
                tracing::error!(error = %e, %call_id, "call end not written to the audit trail; the reservation is released at the next start");
            }
        });
    }

    /// Gives the permission back for a call that was never admitted (`why` in the trail;
    /// such a call was never dialled).
    pub fn release(&self, why: &str) {
        let Some((permissions, reservation)) = self.take() else {
            return;
        };
        metrics::counter!(telemetry::BIC_ATTEMPTS_TOTAL, "result" => "failed").increment(1);
        let mut context = Map::new();
        context.insert("end_cause".into(), json!(why));
        let background = permissions.background().clone();
        background.spawn("permit release", async move {
            let _ = permissions.finish_call(reservation, None, context).await;
        });
    }
}
