//! WhatsApp calls from Meta's webhooks: a `connect` for one of the switch's business numbers
//! starts a call, a `terminate` ends it.

use std::collections::HashMap;
use std::sync::Arc;

use super::sip::MetaSipLink;
use super::WaEvent;
use crate::call::plan::{CallPlan, Carrier, WhatsAppInbound};
use crate::call::sip::caller::WhatsAppCaller;
use crate::call::sip::SipIngress;
use crate::call::{CallId, CallOffer, CallRefused, Calls};
use crate::config::BusinessNumber;
use crate::config::Signaling;
use crate::meta::graph::CallAction;
use crate::meta::outbox::Outbox;
use crate::meta::webhook::{
    CallConnect, CallCreated, CallDirection, CallStatusKind, CallTerminate, MetaEvent, SdpType,
    TerminateStatus,
};
use crate::sip::header::NameAddr;
use crate::sip::msg::HeaderName;
use crate::store::Direction;
use crate::telemetry;

/// The largest recording or transcript of Meta's fetched (a long call's Ogg Opus is a few
/// MB).
const META_MEDIA_MAX_BYTES: u64 = 512 * 1024 * 1024;

/// Turns Meta's calling events into calls.
pub(crate) struct WhatsAppCalls {
    calls: Calls,
    /// Delivers calls to the business's trunks.
    sip: Option<SipIngress>,
    /// Meta's Graph API, and the outbox of actions Meta must get.
    outbox: Outbox,
    /// Business numbers by Meta's phone number id.
    numbers: HashMap<String, BusinessNumber>,
    /// Calling codes of sanctioned regions: their customers' calls are refused.
    sanctioned: Vec<String>,
    /// Call control for numbers whose entry is an IVR.
    control: Option<Control>,
    /// Where Meta's recordings of calls are kept, and the client that fetches them.
    recordings: Option<(
        crate::call::recordings::Recordings,
        Arc<crate::meta::graph::GraphClient>,
    )>,
}

/// What IVR calls need from the node.
pub(crate) struct Control {
    /// The IVRs by name.
    pub ivrs: HashMap<String, crate::config::IvrConfig>,
    /// The schedules IVR conditions test.
    pub schedules: Vec<crate::config::ScheduleConfig>,
    /// The node's services for call control.
    pub services: crate::call::ivr::ControlServices,
    /// The call-control clock's offset from the system clock (ms; a rehearsal's
    /// `--clock`).
    pub clock_offset_ms: i64,
}

impl WhatsAppCalls {
    /// Calls for `numbers`, signalled through `outbox`'s Graph API.
    pub(crate) fn new(
        calls: Calls,
        outbox: Outbox,
        numbers: &[BusinessNumber],
        sip: Option<SipIngress>,
    ) -> Self {
        Self {
            calls,
            sip,
            outbox,
            numbers: numbers
                .iter()
                .map(|n| (n.phone_number_id.clone(), n.clone()))
                .collect(),
            sanctioned: Vec::new(),
            control: None,
            recordings: None,
        }
    }

    /// Keeps Meta's recordings and transcripts of calls in `recordings`, fetched by `graph`.
    pub(crate) fn with_recordings(
        mut self,
        recordings: crate::call::recordings::Recordings,
        graph: Arc<crate::meta::graph::GraphClient>,
    ) -> Self {
        self.recordings = Some((recordings, graph));
        self
    }

    /// Serves numbers whose entry is an IVR with `control`.
    pub(crate) fn with_control(mut self, control: Control) -> Self {
        self.control = Some(control);
        self
    }

    /// Refuses calls from customers whose number starts with one of `codes` (sanctioned
    /// regions: no calling at all).
    pub(crate) fn with_sanctioned(mut self, codes: Vec<String>) -> Self {
        self.sanctioned = codes;
        self
    }

    /// Takes events off the ingress queue, and Meta's INVITEs off the SIP ingress's, until
    /// both close.
    pub(crate) async fn run(
        self,
        mut rx: tokio::sync::mpsc::Receiver<MetaEvent>,
        mut sip: tokio::sync::mpsc::Receiver<MetaSipLink>,
    ) {
        let (mut events_open, mut sip_open) = (true, true);
        while events_open || sip_open {
            tokio::select! {
                event = rx.recv(), if events_open => match event {
                    Some(event) => self.on_event(event).await,
                    None => events_open = false,
                },
                link = sip.recv(), if sip_open => match link {
                    Some(link) => self.on_sip_call(link).await,
                    None => sip_open = false,
                },
            }
        }
    }

    /// Acts on one event.
    pub(crate) async fn on_event(&self, event: MetaEvent) {
        match event {
            MetaEvent::Connect(c) => self.on_connect(c).await,
            MetaEvent::Terminate(t) => self.on_terminate(&t),
            MetaEvent::Created(c) => self.on_created(&c),
            MetaEvent::Status(s) => {
                tracing::debug!(wa_call_id = %s.call_id, status = ?s.status, "WhatsApp call status");
                let event = match s.status {
                    CallStatusKind::Ringing => WaEvent::Ringing,
                    CallStatusKind::Accepted => WaEvent::Accepted,
                    CallStatusKind::Rejected => WaEvent::Rejected,
                    CallStatusKind::Other(_) => return,
                };
                let opaque = s.biz_opaque_callback_data.as_deref();
                let live = matches!(event, WaEvent::Ringing | WaEvent::Accepted);
                if live && self.orphan(&s.call_id, opaque, &s.business.phone_number_id) {
                    return;
                }
                self.deliver(&s.call_id, event);
            }
            MetaEvent::PermissionReply(p) => tracing::info!(
                from = %p.from, response = ?p.response, source = ?p.source,
                "WhatsApp call permission reply"
            ),
            MetaEvent::Media(m) => self.on_media(m),
        }
    }

    /// Meta's recording or transcript of a call: fetched, checked and kept on a task of
    /// its own (the webhook queue does not wait for a download).
    fn on_media(&self, m: crate::meta::webhook::CallMedia) {
        let Some((recordings, graph)) = self
            .recordings
            .clone()
            .filter(|(r, _)| r.config().meta_recordings)
        else {
            tracing::info!(wa_call_id = %m.call_id, media = %m.media_id, "Meta's recording not fetched (recording.meta_recordings is off)");
            return;
        };
        let media = crate::call::recordings::MetaMedia {
            wa_call_id: m.call_id,
            media_id: m.media_id,
            transcript: m.transcript,
            url: m.url,
            sha256_base64: m.sha256,
            mime_type: m.mime_type,
            business_number: m.business.display_number,
            customer: Some(m.user).filter(|u| !u.is_empty()),
        };
        tokio::spawn(async move {
            let fetch = |url: String, to: std::path::PathBuf| async move {
                graph.fetch_media(&url, &to, META_MEDIA_MAX_BYTES).await
            };
            match recordings.keep_meta(&media, fetch).await {
                Ok(id) => {
                    tracing::info!(wa_call_id = %media.wa_call_id, recording = %id, "Meta's recording kept")
                }
                Err(e) => {
                    tracing::warn!(wa_call_id = %media.wa_call_id, error = %e, "Meta's recording not kept")
                }
            }
        });
    }

    async fn on_connect(&self, c: CallConnect) {
        let skip = |reason: &'static str| {
            metrics::counter!(telemetry::META_CALLS_SKIPPED_TOTAL, "reason" => reason).increment(1);
        };
        if c.sdp_type != SdpType::Offer {
            // Meta's answer to a business-initiated call's offer.
            let opaque = c.biz_opaque_callback_data.as_deref();
            if self.orphan(&c.call_id, opaque, &c.business.phone_number_id) {
                return;
            }
            self.deliver(&c.call_id, WaEvent::Answer(c.sdp));
            return;
        }
        let Some(number) = self.numbers.get(&c.business.phone_number_id) else {
            tracing::warn!(
                wa_call_id = %c.call_id, phone_number_id = %c.business.phone_number_id,
                "call to a business number this switch does not serve; left to Meta"
            );
            skip("unknown_number");
            return;
        };
        let customer = c
            .contact
            .as_ref()
            .map(|ct| ct.wa_id.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| c.from.clone());
        let name = c.contact.as_ref().and_then(|ct| ct.name.clone());
        self.offer(number, &c.call_id, &customer, name, c.sdp, Carrier::Graph)
            .await;
    }

    /// A customer's call from Meta's SIP interface: Meta's INVITE to a number in SIP mode,
    /// decided as a `connect` webhook is (the customer is the From's user, Meta's id of the
    /// call its `x-wa-meta-wacid`).
    pub(crate) async fn on_sip_call(&self, link: MetaSipLink) {
        let number = self
            .numbers
            .values()
            .find(|b| b.display_number == link.call.business && b.signaling == Signaling::Sip);
        let from = link
            .call
            .invite
            .header(&HeaderName::From)
            .and_then(|h| NameAddr::parse(&h.value).ok());
        let customer = from
            .as_ref()
            .and_then(|a| crate::sip::uri::SipUri::parse(&a.uri).ok())
            .and_then(|u| u.user)
            .unwrap_or_default();
        let name = from.and_then(|a| a.display);
        let wa_call_id = link.call.wa_call_id();
        let Some(number) = number.cloned() else {
            tracing::warn!(%wa_call_id, "Meta's INVITE names no number in SIP mode; refused");
            Self::refuse_sip(&link, 404, "Not Found").await;
            return;
        };
        if customer.is_empty() {
            Self::refuse_sip(&link, 400, "Bad Request - no caller in From").await;
            return;
        }
        let sdp = String::from_utf8_lossy(&link.call.invite.body).into_owned();
        tracing::info!(%wa_call_id, number = %number.display_number, "WhatsApp call over Meta's SIP interface");
        self.offer(
            &number,
            &wa_call_id,
            &customer,
            name,
            sdp,
            Carrier::Sip(Box::new(link)),
        )
        .await;
    }

    /// Refuses Meta's INVITE at once (the call never started).
    async fn refuse_sip(link: &MetaSipLink, code: u16, reason: &str) {
        let tag = format!("{:x}", crate::call::sip::random_u64());
        link.origin
            .send(link.call.refusal(code, reason, &tag))
            .await;
        link.table.remove(&link.call.call_id());
    }

    /// A customer's call to `number`, however Meta carries it: refused, or started with
    /// the plan the number's entry says.
    async fn offer(
        &self,
        number: &BusinessNumber,
        wa_call_id: &str,
        customer: &str,
        name: Option<String>,
        sdp: String,
        carrier: Carrier,
    ) {
        let skip = |reason: &'static str| {
            metrics::counter!(telemetry::META_CALLS_SKIPPED_TOTAL, "reason" => reason).increment(1);
        };
        if self.calls.registry().by_wa_call_id(wa_call_id).is_some() {
            tracing::debug!(%wa_call_id, "connect for a live call; ignored");
            skip("duplicate");
            if let Carrier::Sip(link) = &carrier {
                Self::refuse_sip(link, 482, "Loop Detected - a call with this id is live").await;
            }
            return;
        }
        // One customer, one number: the same E.164 digits the permissions are keyed by.
        let customer = crate::number::e164_or_raw(customer);
        if crate::permission::sanctioned(&customer, &self.sanctioned) {
            tracing::warn!(%wa_call_id, "call from a sanctioned region; rejecting");
            skip("sanctioned");
            metrics::counter!(telemetry::CALLS_BLOCKED_TOTAL, "reason" => "sanctioned")
                .increment(1);
            self.reject(number, wa_call_id, &carrier).await;
            return;
        }
        let whatsapp = WhatsAppInbound {
            outbox: self.outbox.clone(),
            carrier: carrier.clone(),
            phone_number_id: number.phone_number_id.clone(),
            wa_call_id: wa_call_id.to_string(),
            offer_sdp: sdp,
        };
        let caller = WhatsAppCaller {
            wa_call_id: wa_call_id.to_string(),
            wa_id: customer.clone(),
            name,
            business_number: number.display_number.clone(),
        };
        // A routed number's calls go to its route's trunks through the B2BUA; an IVR
        // number's to its IVR; an echo-test number's callers hear themselves.
        let mut trunk = None;
        let plan = if let Some(entry) = number.entry.as_ref().or(number.app.as_ref()) {
            match self.ivr_setup(entry, number, caller) {
                Some(ivr) => CallPlan::Ivr {
                    whatsapp,
                    ivr: Box::new(ivr),
                },
                None => {
                    tracing::error!(%wa_call_id, ivr = %entry, "IVR not served on this node; rejecting");
                    skip("no_ivr");
                    self.reject(number, wa_call_id, &carrier).await;
                    return;
                }
            }
        } else if let (false, Some(route)) = (number.echo_test, &number.route) {
            let setup = match &self.sip {
                Some(sip) => sip.whatsapp_bridge(route, &caller),
                None => Err((503, "no SIP listener")),
            };
            match setup {
                Ok(setup) => {
                    trunk = setup.first_trunk();
                    CallPlan::WhatsAppToSip {
                        whatsapp,
                        sip: setup,
                    }
                }
                Err((code, why)) => {
                    tracing::warn!(%wa_call_id, %route, code, why, "WhatsApp call not deliverable; rejecting");
                    skip("no_trunk");
                    self.reject(number, wa_call_id, &carrier).await;
                    return;
                }
            }
        } else {
            CallPlan::Echo { whatsapp }
        };
        let offer = CallOffer {
            business_number: Some(number.display_number.clone()),
            customer_wa_id: Some(customer),
            wa_call_id: Some(wa_call_id.to_string()),
            trunk,
            ..CallOffer::new(Direction::UserInitiated)
        };
        match self.calls.start(offer, plan).await {
            Ok(id) => {
                tracing::info!(call_id = %id, %wa_call_id, "WhatsApp call offered")
            }
            Err(e) => {
                tracing::warn!(%wa_call_id, error = %e, "WhatsApp call refused");
                // A call set up and failed has rejected toward Meta itself (its WhatsApp
                // leg ends Meta's side however it ends).
                if !matches!(e, CallRefused::Setup(_)) {
                    self.reject(number, wa_call_id, &carrier).await;
                }
            }
        }
    }

    /// An IVR call's setup: the IVR, and the facts its conditions test (the schedules
    /// open now on the call-control clock, the customer's country, the language that
    /// country speaks or the IVR's default).
    fn ivr_setup(
        &self,
        entry: &str,
        number: &BusinessNumber,
        caller: WhatsAppCaller,
    ) -> Option<crate::call::ivr::IvrSetup> {
        let control = self.control.as_ref()?;
        let ivr = match &number.app {
            // An app's call: an IVR whose one verb hands the call to the app.
            Some(app) => {
                control
                    .services
                    .apps
                    .get(app)?
                    .ivr(Arc::new(crate::control::app::script(vec![
                        crate::control::Verb::App(app.clone()),
                    ])))
            }
            None => control.ivrs.get(entry)?.clone(),
        };
        let now = crate::clock::now_ms() + control.clock_offset_ms;
        let country = crate::number::country(&caller.wa_id);
        let language = country
            .as_ref()
            .and_then(|c| ivr.languages.get(c))
            .cloned()
            .unwrap_or_else(|| ivr.language.clone());
        let facts = crate::control::Facts {
            open: control
                .schedules
                .iter()
                .filter(|s| s.schedule.is_open_at_ms(now))
                .map(|s| s.name.clone())
                .collect(),
            country,
            language,
        };
        tracing::debug!(ivr = %entry, open = ?facts.open, country = ?facts.country, "IVR call");
        Some(crate::call::ivr::IvrSetup {
            ivr,
            facts,
            services: control.services.clone(),
            caller,
            phone_number_id: number.phone_number_id.clone(),
            business_country: number.country.clone(),
            direction: Direction::UserInitiated,
            app: None,
            prompts: Default::default(),
            placed_to: None,
        })
    }

    /// A business-initiated call Meta placed for a call of this switch that is gone (its
    /// `connect` timed out or failed after Meta acted, so its id was never learned): the
    /// webhook's tracking string names the switch's call. Meta's call is ended at once.
    fn orphan(&self, wa_call_id: &str, opaque: Option<&str>, phone_number_id: &str) -> bool {
        let registry = self.calls.registry();
        let Some(ours) = opaque.filter(|o| !o.is_empty()) else {
            return false;
        };
        if registry.by_wa_call_id(wa_call_id).is_some()
            || registry.get(&CallId::from(ours)).is_some()
        {
            return false;
        }
        let Some(number) = self.numbers.get(phone_number_id) else {
            return false;
        };
        tracing::warn!(%wa_call_id, call_id = %ours, "Meta placed a call the switch no longer has; terminating it");
        self.outbox.send(
            &number.phone_number_id,
            CallAction::Terminate {
                call_id: wa_call_id.to_string(),
            },
        );
        true
    }

    /// Hands a Meta event to the call Meta's id names; one for a call whose id is not
    /// known yet (a webhook that overtook the Graph API's answer) waits for it.
    fn deliver(&self, wa_call_id: &str, event: WaEvent) {
        let registry = self.calls.registry();
        if let Some(id) = registry.by_wa_call_id(wa_call_id) {
            self.calls.whatsapp_event(&id, wa_call_id, event);
            return;
        }
        registry.hold_early(wa_call_id, event);
        // The call may have claimed its id meanwhile.
        if let Some(id) = registry.by_wa_call_id(wa_call_id) {
            for event in registry.take_early(wa_call_id) {
                self.calls.whatsapp_event(&id, wa_call_id, event);
            }
        }
    }

    /// Meta's SIP-mode `call_created`: the call it names is carried over SIP. A
    /// customer's call is known by the same id (its INVITE's `x-wa-meta-wacid`); the
    /// switch's own call to a customer learns Meta's id here (its SIP dialog may not carry
    /// it), when exactly one call to that customer from that number waits for an answer.
    fn on_created(&self, c: &CallCreated) {
        let registry = self.calls.registry();
        if let Some(id) = registry.by_wa_call_id(&c.call_id) {
            tracing::debug!(call_id = %id, wa_call_id = %c.call_id, "Meta's call_created for a call over SIP");
            return;
        }
        let business = self
            .numbers
            .get(&c.business.phone_number_id)
            .map(|n| n.display_number.clone());
        let customer = crate::number::e164_or_raw(&c.to);
        let waiting = match (&business, c.direction.as_ref()) {
            (Some(b), Some(CallDirection::BusinessInitiated)) => {
                self.calls.waiting_business_calls(b, &customer)
            }
            _ => Vec::new(),
        };
        match &waiting[..] {
            [id] => {
                tracing::info!(call_id = %id, wa_call_id = %c.call_id, "Meta's id of a call placed over SIP");
                self.calls.learn_wa_call_id(id, &c.call_id);
            }
            _ => tracing::debug!(
                wa_call_id = %c.call_id, waiting = waiting.len(),
                "Meta's call_created matches no one call here"
            ),
        }
    }

    fn on_terminate(&self, t: &CallTerminate) {
        let cause = match &t.status {
            TerminateStatus::Completed => "normal_clearing".to_string(),
            TerminateStatus::Failed => match t.errors.first().and_then(|e| e.code) {
                Some(code) => format!("meta_failed_{code}"),
                None => "meta_failed".to_string(),
            },
            TerminateStatus::Unknown => "normal_clearing".to_string(),
            TerminateStatus::Other(s) => format!("meta_{}", s.to_ascii_lowercase()),
        };
        self.deliver(&t.call_id, WaEvent::Terminated { cause });
    }

    /// Rejects a call toward Meta without holding up the event queue (a Graph `reject`),
    /// or with a final response to Meta's INVITE.
    async fn reject(&self, number: &BusinessNumber, wa_call_id: &str, carrier: &Carrier) {
        match carrier {
            Carrier::Graph => {
                self.outbox.send(
                    &number.phone_number_id,
                    CallAction::Reject {
                        call_id: wa_call_id.to_string(),
                    },
                );
            }
            Carrier::Sip(link) => {
                Self::refuse_sip(link, 480, "Temporarily Unavailable").await;
            }
        }
    }
}
