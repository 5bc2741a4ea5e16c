//! Business-initiated WhatsApp calls: a PBX (or the REST API) calls a customer on WhatsApp.
//!
//! The call runs through the B2BUA like any SIP call, with the WhatsApp customer as leg B:
//! leg A is the PBX's INVITE (or, for an API callback, the agent's leg), and leg B's SIP is
//! answered inside the switch by [`WhatsAppCallee`], which turns it into Graph API actions
//! (`connect` with the switch's WebRTC offer, `terminate`) and turns Meta's webhooks back
//! into SIP (RINGING → 180, ACCEPTED → 200 with the switch's SDP, REJECTED → 603, a
//! terminate before the answer → 480, after it → BYE). It is sans-IO: the bridge's actor
//! carries out what it asks.
//!
//! Before a call is admitted, [`BicContext::admit`] checks the policy (sanctioned regions,
//! excluded countries, optionally Meta's own permission check) and reserves the customer's
//! permission atomically; the [`Permit`] travels with the call, writes each stage of the
//! attempt to the audit trail ahead of it (`call_dialled` before Graph `connect` is sent,
//! `call_connected` on the answer) and is settled from its CDR (connected: used;
//! unanswered: counted toward automatic revocation; failed: given back). A restart settles
//! what a crash left from the last stage recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde_json::{json, Map};

use crate::config::BusinessNumber;
use crate::media::shard::Remote;
use crate::media::transcode::Codec;
use crate::meta::graph::{GraphClient, GraphError};
use crate::permission::service::{Pair, PermissionError, Permissions, Reservation};
use crate::permission::{AttemptOutcome, Blocked};
use crate::sip::build::MessageBuilder;
use crate::sip::core::{CoreEvent, RequestId, ServerId, SipCommand};
use crate::sip::header::NameAddr;
use crate::sip::msg::{HeaderName, Method, SipMessage};
use crate::store::{CallOutcome, Cdr};
use crate::telemetry;

/// The name leg B's "trunk" goes by in CDRs and logs.
pub const WHATSAPP_TRUNK: &str = "whatsapp";

/// What the switch needs to place business-initiated calls. Cheap to clone.
#[derive(Clone)]
pub struct BicContext {
    /// The Graph API client.
    pub graph: Arc<GraphClient>,
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
    pub fn number(&self, user: &str) -> Option<&BusinessNumber> {
        let d = crate::number::e164(user, None).ok()?;
        self.numbers.iter().find(|n| n.display_number == d)
    }

    /// Checks the policy and reserves `wa_id`'s permission for call `call_id` of
    /// `number`. A refusal is in the audit trail (`call_blocked`) and the metrics.
    pub async fn admit(
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
                &self.graph,
                &number.phone_number_id,
                wa_id,
                super::now_ms(),
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
    connected: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
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
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let mut context = Map::new();
                context.insert("end_cause".into(), json!("call lost before it was settled"));
                rt.spawn(async move {
                    let _ = permissions.finish_call(reservation, None, context).await;
                });
            }
            // The process is ending: the next start settles the attempt from the trail, by
            // the same rule.
            Err(_) => tracing::error!(
                call_id = %reservation.call_id,
                "no runtime left to settle the permission; the next start settles it from the trail"
            ),
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

    fn connected_write(&self) -> Option<tokio::task::JoinHandle<()>> {
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
        let write = tokio::spawn(async move {
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
        tokio::spawn(async move {
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
        tokio::spawn(async move {
            let _ = permissions.finish_call(reservation, None, context).await;
        });
    }
}

/// What leg B of a business-initiated call starts from.
#[derive(Clone)]
pub struct BicStart {
    /// The Graph API client.
    pub graph: Arc<GraphClient>,
    /// Meta's id of the business number calling.
    pub phone_number_id: String,
    /// The customer called.
    pub customer: String,
    /// The switch's call id (Meta echoes it in the call's status webhooks).
    pub call_id: String,
    /// The call's hold on the customer's permission (checked again just before Meta is
    /// asked to place the call).
    pub permit: Permit,
    /// How long the customer may take to answer (`sip.ring_timeout_secs`).
    pub ring_timeout: std::time::Duration,
}

impl std::fmt::Debug for BicStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BicStart")
            .field("phone_number_id", &self.phone_number_id)
            .field("call_id", &self.call_id)
            .finish_non_exhaustive()
    }
}

/// Meta's side of a business-initiated call, shared by the call's bridge and the task that
/// places it with Meta, so Meta's call is ended exactly once whatever ends first: the
/// call (its actor may be gone when Meta's id comes) or Meta.
#[derive(Debug, Default)]
pub struct MetaSide(Mutex<MetaState>);

#[derive(Debug, Default)]
struct MetaState {
    /// Meta's call id, once `connect` answered.
    id: Option<String>,
    /// The switch ended the call.
    ended: bool,
    /// Meta's side is over (ended by Meta, or `terminate` sent).
    over: bool,
}

impl MetaSide {
    fn lock(&self) -> std::sync::MutexGuard<'_, MetaState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `connect` answered with Meta's id; true when the call already ended, so the
    /// caller must end Meta's side now.
    pub fn placed(&self, id: &str) -> bool {
        let mut s = self.lock();
        s.id = Some(id.to_string());
        if s.ended && !s.over {
            s.over = true;
            return true;
        }
        false
    }

    /// Meta ended the call (or refused it): nothing to terminate.
    pub fn over(&self) {
        self.lock().over = true;
    }

    /// The switch ends the call: Meta's id to `terminate` now, once; `None` when Meta's
    /// side is over or not placed yet (then [`placed`](Self::placed) says to end it).
    pub fn end(&self) -> Option<String> {
        let mut s = self.lock();
        s.ended = true;
        if s.over {
            return None;
        }
        let id = s.id.clone()?;
        s.over = true;
        Some(id)
    }
}

/// Something Meta said about a business-initiated call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaEvent {
    /// Our `connect` was taken (Meta's call id) or refused (a SIP status and why).
    Connected(Result<String, (u16, String)>),
    /// Meta's SDP answer to our offer (the `connect` webhook).
    Answer(String),
    /// The customer's phone rings.
    Ringing,
    /// The customer answered.
    Accepted,
    /// The customer declined.
    Rejected,
    /// The call is over on Meta's side (the `terminate` webhook), with its cause.
    Terminated {
        /// End cause.
        cause: String,
    },
}

/// What [`WhatsAppCallee`] asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum CalleeOut {
    /// Feed this to the bridge, as if leg B's SIP core had delivered it.
    Bridge(CoreEvent),
    /// Send Graph `connect` with our offer.
    Connect,
    /// Send Graph `terminate` for this call.
    Terminate(String),
    /// Apply Meta's SDP answer to the WebRTC leg.
    Answer(String),
    /// The PBX side's media as agreed: codec chosen from its offer.
    PbxMedia(Remote),
    /// Meta's call id is known.
    WaCallId(String),
    /// The customer answered.
    Answered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No INVITE from the bridge yet.
    Idle,
    /// `connect` sent; no answer from the Graph API yet.
    Connecting,
    /// Meta took the call.
    Proceeding,
    /// The customer answered.
    Answered,
    /// Over.
    Done,
}

/// The WhatsApp customer as leg B of a bridge: answers the bridge's SIP on Meta's behalf.
#[derive(Debug)]
pub struct WhatsAppCallee {
    phase: Phase,
    invite: Option<SipMessage>,
    tag: String,
    wa_call_id: Option<String>,
    /// The bridge gave up before Meta's call id was known: terminate it when it comes.
    abandoned: bool,
    /// The customer declined (the terminate that follows changes nothing).
    rejected: bool,
    /// Our answer toward the bridge (the PBX's codec, chosen from its offer).
    answer: Option<Bytes>,
    /// The codec chosen, its payload type and clock.
    codec: Option<(Codec, u8, u32)>,
    /// The PBX's media as last reported.
    pbx: Option<Remote>,
    detached: u64,
}

impl WhatsAppCallee {
    /// A callee with dialog tag `tag`.
    pub fn new(tag: &str) -> WhatsAppCallee {
        WhatsAppCallee {
            phase: Phase::Idle,
            invite: None,
            tag: tag.to_string(),
            wa_call_id: None,
            abandoned: false,
            rejected: false,
            answer: None,
            codec: None,
            pbx: None,
            detached: 0,
        }
    }

    /// Meta's call id, once known.
    pub fn wa_call_id(&self) -> Option<&str> {
        self.wa_call_id.as_deref()
    }

    fn next_id(&mut self) -> u64 {
        self.detached += 1;
        self.detached
    }

    fn respond(
        &mut self,
        request: &SipMessage,
        code: u16,
        reason: &str,
        sdp: Option<Bytes>,
    ) -> CalleeOut {
        let mut b = MessageBuilder::response_to(request, code, reason, Some(&self.tag));
        if (101..300).contains(&code) {
            b = b.header(
                HeaderName::Contact,
                "<sip:whatsapp@whatsapp.invalid>".to_string(),
            );
        }
        if let Some(sdp) = sdp {
            b = b.body("application/sdp", sdp);
        }
        let id = RequestId::detached(self.next_id());
        CalleeOut::Bridge(CoreEvent::Response(id, b.build()))
    }

    /// A response to the bridge's INVITE.
    fn invite_response(&mut self, code: u16, reason: &str, sdp: Option<Bytes>) -> Vec<CalleeOut> {
        match self.invite.clone() {
            Some(invite) => vec![self.respond(&invite, code, reason, sdp)],
            None => Vec::new(),
        }
    }

    /// A SIP command the bridge sent toward leg B.
    pub fn on_command(&mut self, command: SipCommand) -> Vec<CalleeOut> {
        match command {
            SipCommand::Request { request, .. } => self.on_request(request),
            SipCommand::Cancel { .. } => {
                let mut out = Vec::new();
                if matches!(self.phase, Phase::Connecting | Phase::Proceeding) {
                    out.extend(self.invite_response(487, "Request Terminated", None));
                }
                out.extend(self.end());
                out
            }
            SipCommand::Abandon { .. } => self.end(),
            SipCommand::Ack { .. } | SipCommand::Respond { .. } => Vec::new(),
        }
    }

    fn on_request(&mut self, request: SipMessage) -> Vec<CalleeOut> {
        let method = request.method().cloned();
        let in_dialog = request
            .header(&HeaderName::To)
            .and_then(|h| NameAddr::parse(&h.value).ok())
            .is_some_and(|a| a.tag().is_some());
        match method {
            Some(Method::Invite) if !in_dialog => {
                if self.phase != Phase::Idle {
                    return Vec::new();
                }
                self.phase = Phase::Connecting;
                self.invite = Some(request);
                vec![CalleeOut::Connect]
            }
            Some(Method::Bye) => {
                let mut out = vec![self.respond(&request, 200, "OK", None)];
                out.extend(self.end());
                out
            }
            // A re-INVITE or UPDATE from the PBX (hold, a new address: the bridge reports
            // its media): the WhatsApp side keeps its media; our answer keeps its codec,
            // in the direction the offer asks.
            Some(Method::Invite | Method::Update) if !request.body.is_empty() => {
                let (Some(answer), Some((_, pt, _))) = (self.answer.clone(), self.codec) else {
                    // No answer of ours yet (an offer in the early dialog).
                    return vec![self.respond(&request, 491, "Request Pending", None)];
                };
                let audio = crate::sdp::Sdp::parse(&request.body)
                    .ok()
                    .and_then(|s| s.audio().ok().flatten());
                let Some(audio) = audio.filter(|a| a.formats.iter().any(|f| f.pt == pt)) else {
                    return vec![self.respond(&request, 488, "Not Acceptable Here", None)];
                };
                let direction = match audio.direction {
                    crate::sdp::Direction::SendOnly => "recvonly",
                    crate::sdp::Direction::RecvOnly => "sendonly",
                    crate::sdp::Direction::Inactive => "inactive",
                    crate::sdp::Direction::SendRecv => "sendrecv",
                };
                let text = String::from_utf8_lossy(&answer)
                    .replace("a=sendrecv", &format!("a={direction}"));
                vec![self.respond(&request, 200, "OK", Some(Bytes::from(text)))]
            }
            // An offerless re-INVITE: our SDP goes in the 200 as the offer.
            Some(Method::Invite) => {
                let sdp = self.answer.clone();
                vec![self.respond(&request, 200, "OK", sdp)]
            }
            _ => vec![self.respond(&request, 200, "OK", None)],
        }
    }

    /// Ends the WhatsApp side from ours (`terminate`, once Meta's id is known).
    fn end(&mut self) -> Vec<CalleeOut> {
        let was = self.phase;
        self.phase = Phase::Done;
        match (was, &self.wa_call_id) {
            (Phase::Done | Phase::Idle, _) => Vec::new(),
            (_, Some(id)) => vec![CalleeOut::Terminate(id.clone())],
            (_, None) => {
                self.abandoned = true;
                Vec::new()
            }
        }
    }

    /// What Meta said.
    pub fn on_event(&mut self, event: WaEvent) -> Vec<CalleeOut> {
        match event {
            WaEvent::Connected(Ok(id)) => {
                self.wa_call_id = Some(id.clone());
                let mut out = vec![CalleeOut::WaCallId(id.clone())];
                if self.abandoned {
                    out.push(CalleeOut::Terminate(id));
                    return out;
                }
                if self.phase == Phase::Connecting {
                    self.phase = Phase::Proceeding;
                    out.extend(self.invite_response(100, "Trying", None));
                }
                out
            }
            WaEvent::Connected(Err((code, why))) => {
                if self.phase != Phase::Connecting {
                    return Vec::new();
                }
                self.phase = Phase::Done;
                self.invite_response(code, &why, None)
            }
            WaEvent::Answer(sdp) => match self.phase {
                Phase::Proceeding | Phase::Answered => vec![CalleeOut::Answer(sdp)],
                _ => Vec::new(),
            },
            WaEvent::Ringing => match self.phase {
                Phase::Proceeding => self.invite_response(180, "Ringing", None),
                _ => Vec::new(),
            },
            WaEvent::Accepted => {
                if self.phase != Phase::Proceeding {
                    return Vec::new();
                }
                self.phase = Phase::Answered;
                let offer = self
                    .invite
                    .as_ref()
                    .map(|i| i.body.clone())
                    .unwrap_or_default();
                let mut out = Vec::new();
                let Some(answer) = self.answer_to(&offer) else {
                    // The PBX offered nothing the switch speaks with Opus.
                    self.phase = Phase::Done;
                    out.extend(self.invite_response(488, "Not Acceptable Here", None));
                    if let Some(id) = self.wa_call_id.clone() {
                        out.push(CalleeOut::Terminate(id));
                    }
                    return out;
                };
                self.answer = Some(answer.clone());
                if let Some(remote) = self.pbx {
                    out.extend(self.pbx_media(remote));
                }
                out.push(CalleeOut::Answered);
                out.extend(self.invite_response(200, "OK", Some(answer)));
                out
            }
            WaEvent::Rejected => {
                if self.phase != Phase::Proceeding {
                    return Vec::new();
                }
                self.phase = Phase::Done;
                self.rejected = true;
                self.invite_response(603, "Decline", None)
            }
            WaEvent::Terminated { cause } => match self.phase {
                // Meta failed the call (not the customer's doing): the PBX hears a
                // network failure, and the permission is given back.
                Phase::Proceeding | Phase::Connecting if cause.starts_with("meta_failed") => {
                    self.phase = Phase::Done;
                    let phrase = format!("Service Unavailable - {}", safe_phrase(&cause));
                    self.invite_response(503, &phrase, None)
                }
                Phase::Proceeding | Phase::Connecting => {
                    self.phase = Phase::Done;
                    let phrase = format!("Temporarily Unavailable - {}", safe_phrase(&cause));
                    self.invite_response(480, &phrase, None)
                }
                Phase::Answered => {
                    self.phase = Phase::Done;
                    self.bye().into_iter().collect()
                }
                Phase::Idle | Phase::Done => Vec::new(),
            },
        }
    }

    /// The customer hung up: a BYE from leg B inside the bridge's dialog.
    fn bye(&mut self) -> Option<CalleeOut> {
        let invite = self.invite.as_ref()?;
        let from = invite.header(&HeaderName::From)?.value.clone();
        let to = invite.header(&HeaderName::To)?.value.clone();
        let call_id = invite.header(&HeaderName::CallId)?.value.clone();
        let contact = invite
            .header(&HeaderName::Contact)
            .and_then(|h| NameAddr::parse(&h.value).ok())
            .map_or_else(|| "sip:waswitch@whatsapp.invalid".to_string(), |a| a.uri);
        let n = self.next_id();
        let request = MessageBuilder::request(Method::Bye, &contact)
            .header(
                HeaderName::Via,
                format!("SIP/2.0/TLS whatsapp.invalid;branch=z9hG4bKwa{n:x}"),
            )
            .header(HeaderName::MaxForwards, "70")
            .header(
                HeaderName::From,
                format!("{};tag={}", String::from_utf8_lossy(&to), self.tag),
            )
            .header(HeaderName::To, from)
            .header(HeaderName::CallId, call_id)
            .header(HeaderName::CSeq, "1 BYE")
            .build();
        Some(CalleeOut::Bridge(CoreEvent::Request {
            server: ServerId::detached(n),
            request,
            from: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
        }))
    }

    /// The PBX's media as its SDP says (the bridge reports it from every offer it
    /// relays); once the codec is chosen it goes to the media plane with it.
    pub fn pbx_media(&mut self, mut remote: Remote) -> Vec<CalleeOut> {
        self.pbx = Some(remote);
        let Some((codec, pt, clock)) = self.codec else {
            return Vec::new();
        };
        remote.codec = Some(codec);
        remote.codec_pt = Some(pt);
        remote.clock = clock;
        vec![CalleeOut::PbxMedia(remote)]
    }

    /// Our answer to the PBX's offer: its first codec the switch speaks (Opus, PCMU,
    /// PCMA) and its telephone-events; the address is the anchor's (the bridge writes
    /// it).
    fn answer_to(&mut self, offer: &[u8]) -> Option<Bytes> {
        let audio = crate::sdp::Sdp::parse(offer).ok()?.audio().ok()??;
        let format = audio
            .formats
            .iter()
            .find(|f| Codec::from_name(&f.name).is_some())?;
        let codec = Codec::from_name(&format.name)?;
        let mut sdp = format!(
            "v=0\r\no=waswitch {n} 1 IN IP4 0.0.0.0\r\ns=WhatsApp call\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n",
            n = self.detached + 1
        );
        let te = audio.telephone_event_format().cloned();
        let mut pts = format.pt.to_string();
        if let Some(te) = &te {
            pts.push_str(&format!(" {}", te.pt));
        }
        sdp.push_str(&format!("m=audio 9 RTP/AVP {pts}\r\n"));
        match codec {
            Codec::Opus => sdp.push_str(&format!(
                "a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} useinbandfec=1\r\n",
                pt = format.pt
            )),
            c => sdp.push_str(&format!("a=rtpmap:{} {}/8000\r\n", format.pt, c.name())),
        }
        if let Some(te) = &te {
            sdp.push_str(&format!(
                "a=rtpmap:{pt} telephone-event/{clock}\r\na=fmtp:{pt} 0-15\r\n",
                pt = te.pt,
                clock = te.clock
            ));
        }
        sdp.push_str("a=ptime:20\r\na=sendrecv\r\n");
        self.codec = Some((codec, format.pt, format.clock));
        Some(Bytes::from(sdp))
    }
}

/// Whether an SDP offer (a PBX's INVITE body) has audio in a codec the switch carries to
/// WhatsApp (Opus, PCMU, PCMA). An INVITE without an offer has none.
pub fn offer_usable(body: &[u8]) -> bool {
    crate::sdp::Sdp::parse(body)
        .ok()
        .and_then(|sdp| sdp.audio().ok().flatten())
        .is_some_and(|a| {
            a.formats
                .iter()
                .any(|f| Codec::from_name(&f.name).is_some())
        })
}

/// Text from elsewhere (Meta's error messages, webhook causes) made safe for a SIP reason
/// phrase: printable ASCII without quotes, at most 80 characters.
pub fn safe_phrase(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| !matches!(c, '"' | '\\'))
        .take(80)
        .collect()
}

/// The SIP status and reason of a refused Graph `connect`.
pub fn connect_refusal(e: &GraphError) -> (u16, String) {
    match e.code() {
        // No approved call permission (Meta's records disagree with the switch's).
        Some(138_006) => (403, "Forbidden - Meta reports no call permission".into()),
        // The number is not on WhatsApp, or its client cannot take calls.
        Some(138_001) => (404, "Not Found - receiver uncallable on WhatsApp".into()),
        // A call with the customer is already in progress.
        Some(138_003) => (
            486,
            "Busy Here - a call with the customer is in progress".into(),
        ),
        _ if e.transient() => (503, "Service Unavailable - WhatsApp unreachable".into()),
        _ => (
            480,
            format!("Temporarily Unavailable - {}", safe_phrase(&e.to_string())),
        ),
    }
}

/// The `Reason` header value and status of a call refused for `blocked`, as a SIP
/// response to `invite` with tag `tag`.
pub fn refusal(invite: &SipMessage, blocked: Blocked, tag: &str) -> SipMessage {
    let (code, phrase) = blocked.sip_status();
    MessageBuilder::response_to(invite, code, &format!("{phrase} - {blocked}"), Some(tag))
        .header(HeaderName::Reason, blocked.sip_reason())
        .build()
}

#[cfg(test)]
mod tests;
