//! Calls to WhatsApp customers over SIP: a PBX's INVITE whose From is one of the
//! business's WhatsApp numbers calls the customer its Request-URI names; the REST API's
//! callbacks call a customer first and an agent once they answer.
//!
//! Nothing reaches Meta before the policy and the customer's permission allow it: the
//! permission is reserved here, before the call is admitted, and a refusal gets its
//! precise SIP status and `Reason` (and is in the audit trail).

use std::net::SocketAddr;
use std::sync::Arc;

use super::bridge::BridgeSetup;
use super::caller::WhatsAppCaller;
use super::random_u64;
use super::{Route, SipIngress};
use crate::call::plan::{CallPlan, WhatsAppOutbound};
use crate::call::whatsapp::leg::safe_phrase;
use crate::call::{CallOffer, CallRefused};
use crate::media::transcode::Codec;
use crate::permission::service::PermissionError;
use crate::permission::Blocked;
use crate::routing::{Caller, NoRoute};
use crate::sip::b2bua::{dialled_user, Target};
use crate::sip::build::MessageBuilder;
use crate::sip::core::{ServerId, SipCommand};
use crate::sip::msg::{HeaderName, SipMessage};
use crate::sip::transport::SipHandle;
use crate::store::Direction;

/// The name a business-initiated call's "trunk" (Meta) goes by in CDRs and logs.
pub(crate) const WHATSAPP_TRUNK: &str = "whatsapp";

/// An API callback: call a customer on WhatsApp, then bridge them to a SIP destination.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallbackRequest {
    /// The business's WhatsApp number calling (digits).
    pub business_number: String,
    /// The customer.
    pub wa_id: String,
    /// Deliver to this configured trunk...
    #[serde(default)]
    pub trunk: Option<String>,
    /// ...or to the trunks of this configured route, in order.
    #[serde(default)]
    pub route: Option<String>,
    /// The agent extension or queue to call there (default: the trunk's own user, or
    /// the business number).
    #[serde(default)]
    pub user: Option<String>,
}

/// Why an API callback was not placed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallbackRefused {
    /// WhatsApp calling is not configured.
    #[error("business-initiated calls need [meta] and a [[business_number]]")]
    NotEnabled,
    /// The business number is not one the switch serves.
    #[error("{0} is not a business number of this switch")]
    UnknownNumber(String),
    /// The customer is not a WhatsApp number.
    #[error("wa_id: {0}")]
    BadCustomer(crate::number::NumberError),
    /// The destination is missing, unknown or not allowed.
    #[error("destination: {0}")]
    BadDestination(String),
    /// No trunk of the destination can take a call now.
    #[error("no trunk of the destination is available")]
    NoTrunk,
    /// The policy or the customer's permission refuses the call (recorded).
    #[error("{0}")]
    Blocked(Blocked),
    /// The permission could not be checked.
    #[error("{0}")]
    Permission(PermissionError),
    /// The node did not admit the call.
    #[error("{0}")]
    Refused(CallRefused),
    /// The verbs given do not check, or a prompt they play cannot be played.
    #[error("{0}")]
    BadVerbs(String),
    /// The token may not have this app drive the call (not the business number's app).
    #[error(
        "app {0:?} is not this business number's app; only the operator's token may name another"
    )]
    NotYourApp(String),
}

/// `POST /v1/calls` for a call an HTTP app drives: `{from, to: {whatsapp: wa_id}, app,
/// verbs}`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppCallRequest {
    /// The business number calling (digits, `+` or `00`).
    pub from: String,
    /// Who is called first.
    pub to: CallTarget,
    /// The app driving the call (default: the business number's).
    #[serde(default)]
    pub app: Option<String>,
    /// The first verbs (default: the app is asked, with `call.initiated`, once the customer
    /// answers).
    #[serde(default)]
    pub verbs: Option<serde_json::Value>,
}

/// A placed call's first party, ready: the customer (their permission not yet reserved),
/// or the bridge to a SIP party with the party as the app's events name it.
enum Placed {
    Customer(Box<Customer>),
    Sip(Box<BridgeSetup>, serde_json::Value),
}

/// Who a placed call reaches first: exactly one of `whatsapp`, `sip` (with the trunk
/// it goes out on) and `agent`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallTarget {
    /// A customer on WhatsApp, by wa_id.
    #[serde(default)]
    pub whatsapp: Option<String>,
    /// A SIP URI (`sip:user@host[:port]`), reached through a configured trunk.
    #[serde(default)]
    pub sip: Option<String>,
    /// The trunk `sip` goes out on (default: the one trunk whose URI names its host and
    /// port).
    #[serde(default)]
    pub trunk: Option<String>,
    /// A registered agent, by SIP user.
    #[serde(default)]
    pub agent: Option<String>,
}

/// A placed call's first party, as [`CallTarget`] names it once checked.
enum FirstParty<'a> {
    WhatsApp(&'a str),
    Sip {
        uri: &'a str,
        trunk: Option<&'a str>,
    },
    Agent(&'a str),
}

impl CallTarget {
    fn first(&self) -> Result<FirstParty<'_>, CallbackRefused> {
        let bad = |why: &str| Err(CallbackRefused::BadDestination(why.into()));
        if self.trunk.is_some() && self.sip.is_none() {
            return bad("to.trunk goes with to.sip");
        }
        match (&self.whatsapp, &self.sip, &self.agent) {
            (Some(w), None, None) => Ok(FirstParty::WhatsApp(w)),
            (None, Some(uri), None) => Ok(FirstParty::Sip {
                uri,
                trunk: self.trunk.as_deref(),
            }),
            (None, None, Some(user)) => Ok(FirstParty::Agent(user)),
            _ => bad("to: give exactly one of whatsapp, sip and agent"),
        }
    }
}

/// A customer the switch may call for a business number: the number, the customer in
/// E.164, and what business-initiated calls need.
struct Customer {
    bic: crate::call::whatsapp::permit::BicContext,
    number: crate::config::BusinessNumber,
    wa_id: String,
}

impl Customer {
    /// Checks the policy and the customer's permission, and reserves it for `call_id`
    /// (a refusal is in the audit trail).
    async fn reserve(
        &self,
        call_id: &str,
    ) -> Result<crate::call::whatsapp::permit::Permit, CallbackRefused> {
        match self.bic.admit(&self.number, &self.wa_id, call_id).await {
            Ok(p) => Ok(p),
            Err(PermissionError::Blocked(b)) => Err(CallbackRefused::Blocked(b)),
            Err(e) => Err(CallbackRefused::Permission(e)),
        }
    }

    /// The WhatsApp leg calling the customer under `permit`.
    fn outbound(
        &self,
        permit: crate::call::whatsapp::permit::Permit,
        ring_timeout: std::time::Duration,
    ) -> WhatsAppOutbound {
        WhatsAppOutbound {
            outbox: self.bic.outbox.clone(),
            dialer: crate::call::plan::Dialer::Graph,
            phone_number_id: self.number.phone_number_id.clone(),
            customer: self.wa_id.clone(),
            permit,
            ring_timeout,
        }
    }
}

impl SipIngress {
    /// The business number and the customer a business-initiated call would reach.
    fn customer(&self, business_number: &str, wa_id: &str) -> Result<Customer, CallbackRefused> {
        let bic = self
            .inner
            .bic
            .get()
            .ok_or(CallbackRefused::NotEnabled)?
            .clone();
        let number = bic
            .number(business_number)
            .cloned()
            .ok_or_else(|| CallbackRefused::UnknownNumber(business_number.to_string()))?;
        let wa_id = crate::number::e164(wa_id, Some(&number.country))
            .map_err(CallbackRefused::BadCustomer)?;
        Ok(Customer { bic, number, wa_id })
    }

    /// A business number of this switch, as business-initiated calls need it.
    fn business_number(
        &self,
        number: &str,
    ) -> Result<crate::config::BusinessNumber, CallbackRefused> {
        let bic = self.inner.bic.get().ok_or(CallbackRefused::NotEnabled)?;
        bic.number(number)
            .cloned()
            .ok_or_else(|| CallbackRefused::UnknownNumber(number.to_string()))
    }

    /// Starts a call the switch places; a call not admitted gives its permission back.
    async fn start_placed(
        &self,
        id: crate::call::CallId,
        offer: CallOffer,
        plan: CallPlan,
        permit: Option<&crate::call::whatsapp::permit::Permit>,
    ) -> Result<crate::call::CallId, CallbackRefused> {
        match self.inner.calls.start_as(id, offer, plan).await {
            Ok(id) => Ok(id),
            Err(e) => {
                if let Some(permit) = permit {
                    permit.release("not admitted");
                }
                Err(CallbackRefused::Refused(e))
            }
        }
    }

    /// Calls the customer on WhatsApp for `req.business_number` (policy and permission
    /// checked, and the permission reserved, first); when they answer, calls
    /// `req.user` at the destination trunk(s) and bridges the two. The call's id.
    pub(crate) async fn place_callback(
        &self,
        req: &CallbackRequest,
    ) -> Result<crate::call::CallId, CallbackRefused> {
        let inner = &self.inner;
        let party = self.customer(&req.business_number, &req.wa_id)?;
        let (number, customer) = (&party.number, party.wa_id.clone());
        let handles = inner.handles.get().ok_or(CallbackRefused::NoTrunk)?;
        let trunks = inner.router.trunks();
        let usable = |t: usize| !trunks[t].pstn && inner.trunk_usable(t, handles);
        let indexes = match (&req.trunk, &req.route) {
            (Some(name), None) => {
                let t = trunks
                    .iter()
                    .position(|t| &t.name == name)
                    .ok_or_else(|| CallbackRefused::BadDestination(format!("no trunk {name:?}")))?;
                if trunks[t].pstn {
                    metrics::counter!(crate::telemetry::CALLS_BLOCKED_TOTAL, "reason" => "pstn")
                        .increment(1);
                    return Err(CallbackRefused::Blocked(Blocked::Pstn));
                }
                if !usable(t) {
                    return Err(CallbackRefused::NoTrunk);
                }
                vec![t]
            }
            (None, Some(route)) => match inner.router.named(
                route,
                &Caller {
                    country: crate::number::country(&customer).as_deref(),
                    seed: random_u64(),
                },
                usable,
            ) {
                Ok(t) => t,
                Err(NoRoute::AllTrunksUnavailable) => return Err(CallbackRefused::NoTrunk),
                Err(_) => {
                    return Err(CallbackRefused::BadDestination(format!(
                        "no route {route:?}"
                    )))
                }
            },
            _ => {
                return Err(CallbackRefused::BadDestination(
                    "give exactly one of trunk and route".into(),
                ))
            }
        };
        if let Some(user) = &req.user {
            let ok = !user.is_empty()
                && user.len() <= 64
                && user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-_.*#".contains(&b));
            if !ok {
                return Err(CallbackRefused::BadDestination(format!(
                    "user {user:?} is not a SIP user (letters, digits, + - _ . * #)"
                )));
            }
        }
        let id = crate::call::CallId::new();
        let caller = WhatsAppCaller {
            wa_call_id: String::new(),
            wa_id: customer.clone(),
            name: None,
            business_number: number.display_number.clone(),
        };
        let setup = self
            .bridge_from_whatsapp(handles, &indexes, &caller, req.user.as_deref())
            .map_err(|_| CallbackRefused::NoTrunk)?;
        let permit = party.reserve(id.as_str()).await?;
        let whatsapp = party.outbound(permit.clone(), inner.bridge.ring_timeout);
        let mut offer = CallOffer::new(Direction::BusinessInitiated);
        offer.business_number = Some(number.display_number.clone());
        offer.customer_wa_id = Some(customer);
        offer.trunk = setup.first_trunk();
        let plan = CallPlan::Callback {
            whatsapp,
            sip: setup,
        };
        self.start_placed(id, offer, plan, Some(&permit)).await
    }

    /// Places a call an HTTP app drives. To a customer on WhatsApp (`to.whatsapp`): the
    /// policy and their permission are checked, and the permission reserved, first,
    /// exactly as for a PBX's call. To a SIP party (`to.sip` through a trunk, or
    /// `to.agent`'s registered phone): the switch calls them, and its script's dials reach
    /// WhatsApp users, each with their own permission. Either way the verbs run once the
    /// first party answers (the given ones, or the app's answer to `call.initiated`);
    /// they are checked and their prompts fetched before anything is reserved or dialled.
    pub(crate) async fn place_app_call(
        &self,
        req: &AppCallRequest,
        services: &crate::call::ivr::ControlServices,
        any_app: bool,
    ) -> Result<crate::call::CallId, CallbackRefused> {
        let (number, first) = match req.to.first()? {
            FirstParty::WhatsApp(wa_id) => {
                let party = self.customer(&req.from, wa_id)?;
                (party.number.clone(), Placed::Customer(Box::new(party)))
            }
            FirstParty::Sip { uri, trunk } => {
                let number = self.business_number(&req.from)?;
                let sip = self.placed_to_uri(uri, trunk, &number.display_number)?;
                (
                    number,
                    Placed::Sip(Box::new(sip), serde_json::json!({ "sip": uri })),
                )
            }
            FirstParty::Agent(user) => {
                let number = self.business_number(&req.from)?;
                let sip = self.placed_to_agent(user, &number.display_number)?;
                (
                    number,
                    Placed::Sip(Box::new(sip), serde_json::json!({ "agent": user })),
                )
            }
        };
        let name = req
            .app
            .clone()
            .or_else(|| number.app.clone())
            .ok_or_else(|| {
                CallbackRefused::BadDestination(
                    "name the app that drives the call (app), or give the business number one"
                        .into(),
                )
            })?;
        if !any_app && number.app.as_deref() != Some(name.as_str()) {
            return Err(CallbackRefused::NotYourApp(name));
        }
        let app = services.apps.get(&name).cloned().ok_or_else(|| {
            CallbackRefused::BadDestination(format!(
                "no app {name:?}; the apps are: {}",
                services.apps.names().join(", ")
            ))
        })?;
        let (script, prompts) = match &req.verbs {
            Some(body) => {
                let ready = app
                    .prepare(body)
                    .await
                    .map_err(|e| CallbackRefused::BadVerbs(e.to_string()))?;
                (ready.script, ready.prompts)
            }
            None => (
                Arc::new(crate::control::app::script(vec![
                    crate::control::Verb::App(name.clone()),
                ])),
                Default::default(),
            ),
        };
        let id = crate::call::CallId::new();
        let wa_id = match &first {
            Placed::Customer(party) => Some(party.wa_id.clone()),
            Placed::Sip(..) => None,
        };
        let caller = WhatsAppCaller {
            wa_call_id: String::new(),
            wa_id: wa_id.clone().unwrap_or_default(),
            name: None,
            business_number: number.display_number.clone(),
        };
        let mut ivr = crate::call::ivr::IvrSetup {
            ivr: app.ivr(script),
            facts: crate::control::Facts {
                open: Default::default(),
                country: wa_id.as_deref().and_then(crate::number::country),
                language: "en".into(),
            },
            services: services.clone(),
            caller,
            phone_number_id: number.phone_number_id.clone(),
            business_country: number.country.clone(),
            direction: Direction::BusinessInitiated,
            app: Some(app),
            prompts,
            placed_to: None,
        };
        let mut offer = CallOffer::new(Direction::BusinessInitiated);
        offer.business_number = Some(number.display_number.clone());
        offer.customer_wa_id = wa_id;
        match first {
            Placed::Customer(party) => {
                let permit = party.reserve(id.as_str()).await?;
                let whatsapp = party.outbound(permit.clone(), self.inner.bridge.ring_timeout);
                let plan = CallPlan::AppCall {
                    whatsapp,
                    ivr: Box::new(ivr),
                };
                self.start_placed(id, offer, plan, Some(&permit)).await
            }
            Placed::Sip(sip, placed_to) => {
                offer.trunk = sip.first_trunk();
                ivr.placed_to = Some(placed_to);
                let plan = CallPlan::AppToSip {
                    sip: *sip,
                    ivr: Box::new(ivr),
                };
                self.start_placed(id, offer, plan, None).await
            }
        }
    }

    /// The business number as the caller of a call the switch places to a SIP party.
    fn business_caller(business_number: &str) -> WhatsAppCaller {
        WhatsAppCaller {
            wa_call_id: String::new(),
            wa_id: business_number.to_string(),
            name: None,
            business_number: business_number.to_string(),
        }
    }

    /// The bridge of a call placed to SIP URI `uri` through `trunk` (default: the one
    /// trunk whose URI has the same host and port), the switch its caller. Never toward
    /// the phone network: a `tel:` URI or a PSTN trunk is refused (and counted).
    fn placed_to_uri(
        &self,
        uri: &str,
        trunk: Option<&str>,
        business_number: &str,
    ) -> Result<BridgeSetup, CallbackRefused> {
        let inner = &self.inner;
        let pstn = || {
            metrics::counter!(crate::telemetry::CALLS_BLOCKED_TOTAL, "reason" => "pstn")
                .increment(1);
            CallbackRefused::Blocked(Blocked::Pstn)
        };
        if uri.get(..4).is_some_and(|s| s.eq_ignore_ascii_case("tel:")) {
            return Err(pstn());
        }
        let parsed = crate::sip::uri::SipUri::parse(uri).map_err(|e| {
            CallbackRefused::BadDestination(format!("to.sip: {e} (write sip:user@host[:port])"))
        })?;
        let trunks = inner.router.trunks();
        let index = match trunk {
            Some(name) => trunks.iter().position(|t| t.name == name).ok_or_else(|| {
                CallbackRefused::BadDestination(format!(
                    "to.trunk: no trunk {name:?}; the trunks are: {}",
                    trunk_names(trunks)
                ))
            })?,
            None => {
                let port = parsed.port.unwrap_or(5060);
                let matching: Vec<usize> = (0..trunks.len())
                    .filter(|&t| {
                        trunks[t].uri.host == parsed.host
                            && trunks[t].uri.port.unwrap_or(5060) == port
                    })
                    .collect();
                match matching.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(CallbackRefused::BadDestination(format!(
                            "to.sip: no trunk reaches {}:{port}; name one with to.trunk (the trunks are: {})",
                            parsed.host,
                            trunk_names(trunks)
                        )))
                    }
                    _ => {
                        return Err(CallbackRefused::BadDestination(format!(
                            "to.sip: several trunks reach {}:{port}; name one with to.trunk",
                            parsed.host
                        )))
                    }
                }
            }
        };
        if trunks[index].pstn {
            return Err(pstn());
        }
        let handles = inner.handles.get().ok_or(CallbackRefused::NoTrunk)?;
        if !inner.trunk_usable(index, handles) {
            return Err(CallbackRefused::NoTrunk);
        }
        let caller = Self::business_caller(business_number);
        self.bridge_from_whatsapp(handles, &[index], &caller, parsed.user.as_deref())
            .map(BridgeSetup::placed)
            .map_err(|_| CallbackRefused::NoTrunk)
    }

    /// The bridge of a call placed to agent `user`'s registered phone, the switch its
    /// caller. A browser phone is not called this way: the agent's page places its own
    /// calls.
    fn placed_to_agent(
        &self,
        user: &str,
        business_number: &str,
    ) -> Result<BridgeSetup, CallbackRefused> {
        match self.agent_on_websocket(user) {
            None => {
                return Err(CallbackRefused::BadDestination(format!(
                    "to.agent: agent {user:?} has no registered phone"
                )))
            }
            Some(true) => {
                return Err(CallbackRefused::BadDestination(format!(
                    "to.agent: agent {user:?} is on a browser phone; a call placed to an agent reaches SIP phones (the agent's page places its own calls)"
                )))
            }
            Some(false) => {}
        }
        let users = [user.to_string()];
        let call = super::ingress::AgentCall {
            users: &users,
            queue: "",
            ivr_path: "",
            webrtc: None,
            ring_timeout: self.inner.bridge.ring_timeout,
        };
        self.agent_bridge(call, &Self::business_caller(business_number))
            .map(BridgeSetup::placed)
            .map_err(|(_, why)| CallbackRefused::BadDestination(format!("to.agent: {why}")))
    }

    /// A WhatsApp user a call's control dials from `business_number`: the policy and their
    /// permission checked, and the permission reserved, exactly as for a PBX's call.
    pub(crate) async fn whatsapp_callee(
        &self,
        business_number: &str,
        wa_id: &str,
        call_id: &str,
    ) -> Result<WhatsAppOutbound, CallbackRefused> {
        let party = self.customer(business_number, wa_id)?;
        let permit = party.reserve(call_id).await?;
        let mut outbound = party.outbound(permit, self.inner.bridge.ring_timeout);
        outbound.dialer = self.dialer(&party.number);
        Ok(outbound)
    }

    /// A PBX calls a customer on WhatsApp for business number `number`: the
    /// Request-URI's user is the customer. The policy and the customer's permission are
    /// checked (and the permission reserved) before the call is admitted; a refusal gets
    /// its precise status and `Reason`, and is in the audit trail.
    pub(super) fn business_call(
        &self,
        server: ServerId,
        invite: SipMessage,
        from: SocketAddr,
        origin: &SipHandle,
        trunk: String,
        number: crate::config::BusinessNumber,
    ) -> Option<SipCommand> {
        let inner = &self.inner;
        let bic = inner.bic.get()?.clone();
        let dialer = self.dialer(&number);
        let tag = format!("{:x}", random_u64());
        let respond = |response: SipMessage| Some(SipCommand::Respond { server, response });
        let pstn = matches!(
            &invite.start,
            crate::sip::msg::StartLine::Request { uri, .. } if uri.len() >= 4 && uri[..4].eq_ignore_ascii_case(b"tel:")
        );
        if pstn {
            metrics::counter!(crate::telemetry::CALLS_BLOCKED_TOTAL, "reason" => "pstn")
                .increment(1);
            return respond(refusal(&invite, Blocked::Pstn, &tag));
        }
        let customer = dialled_user(&invite)
            .ok_or(crate::number::NumberError::Empty)
            .and_then(|u| crate::number::e164(&u, Some(&number.country)));
        let customer = match customer {
            Ok(c) => c,
            Err(e) => {
                // 484 for a number cut short, 404 for anything else that is not one.
                let (code, phrase) = match e {
                    crate::number::NumberError::TooShort(_) => (484, "Address Incomplete"),
                    _ => (404, "Not Found"),
                };
                let warning = format!("399 waswitch \"{}\"", safe_phrase(&e.to_string()));
                return respond(
                    MessageBuilder::response_to(
                        &invite,
                        code,
                        &format!("{phrase} - not a WhatsApp number"),
                        Some(&tag),
                    )
                    .header(HeaderName::Warning, warning)
                    .build(),
                );
            }
        };
        // The customer's phone must not ring for a call whose audio could not be carried:
        // the offer needs a codec the switch speaks with WhatsApp's Opus.
        if !offer_usable(&invite.body) {
            return respond(
                MessageBuilder::response_to(
                    &invite,
                    488,
                    "Not Acceptable Here - offer Opus, PCMU or PCMA",
                    Some(&tag),
                )
                .header(
                    HeaderName::Warning,
                    "305 waswitch \"no audio codec in common; an SDP offer is required\"",
                )
                .build(),
            );
        }
        let target = Target {
            trunk: WHATSAPP_TRUNK.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            hostport: "whatsapp.invalid".into(),
            user: Some(customer.clone()),
            contact: self.contact(origin),
            credentials: None,
            // Meta's answer to `connect` (the Graph API's own time limit applies first).
            invite_timeout: std::time::Duration::from_secs(30),
            headers: Vec::new(),
            uri: None,
            webrtc: None,
        };
        let a_call_id = invite
            .header(&HeaderName::CallId)
            .map(|h| h.value.clone())
            .unwrap_or_default();
        let bridge = match self.bridge_from(server, &invite, from, origin, vec![target]) {
            Ok(b) => b,
            Err(response) => return respond(*response),
        };
        inner
            .table
            .insert(a_call_id.clone(), Route::Pending(Vec::new()));
        let table = Arc::clone(&inner.table);
        let load = inner.load.clone();
        let calls = inner.calls.clone();
        let origin = origin.clone();
        let ring_timeout = inner.bridge.ring_timeout;
        inner.admissions.spawn("business call admission", async move {
            let id = crate::call::CallId::new();
            let refuse = |response: SipMessage| {
                table.remove(&a_call_id);
                let origin = origin.clone();
                async move { origin.send(SipCommand::Respond { server, response }).await }
            };
            let permit = match bic.admit(&number, &customer, id.as_str()).await {
                Ok(p) => p,
                Err(PermissionError::Blocked(blocked)) => {
                    tracing::info!(call_id = %id, %customer, reason = blocked.as_str(), "business-initiated call refused");
                    refuse(refusal(&invite, blocked, &tag)).await;
                    return;
                }
                Err(e) => {
                    tracing::error!(call_id = %id, error = %e, "permission not checked; refusing the call");
                    let response = MessageBuilder::response_to(
                        &invite,
                        503,
                        "Service Unavailable - permission store unavailable",
                        Some(&tag),
                    )
                    .header(HeaderName::RetryAfter, "30")
                    .build();
                    refuse(response).await;
                    return;
                }
            };
            let setup = BridgeSetup {
                bridge: Box::new(bridge),
                a: Some(origin.clone()),
                placed: false,
                b: vec![None],
                trunk_index: Vec::new(),
                a_call_id: a_call_id.clone(),
                table: Arc::clone(&table),
                load,
            };
            let whatsapp = WhatsAppOutbound {
                outbox: bic.outbox.clone(),
                dialer,
                phone_number_id: number.phone_number_id.clone(),
                customer: customer.clone(),
                permit: permit.clone(),
                ring_timeout,
            };
            let mut offer = CallOffer::new(Direction::BusinessInitiated);
            offer.sip_call_id = Some(String::from_utf8_lossy(&a_call_id).into_owned());
            offer.business_number = Some(number.display_number.clone());
            offer.customer_wa_id = Some(customer);
            offer.trunk = Some(trunk);
            let plan = CallPlan::SipToWhatsApp {
                sip: setup,
                whatsapp,
            };
            let refused = match calls.start_as(id, offer, plan).await {
                Ok(_) => return,
                Err(e) => e,
            };
            // A call that failed while starting settled its permit from its CDR.
            permit.release("not admitted");
            let (code, reason) = match refused {
                CallRefused::Draining => (503, "Service Unavailable - draining"),
                CallRefused::Overloaded => (503, "Service Unavailable - call limit"),
                CallRefused::Setup(_) => (500, "Server Internal Error - call setup failed"),
            };
            let response = MessageBuilder::response_to(&invite, code, reason, Some(&tag))
                .header(HeaderName::RetryAfter, "5")
                .build();
            refuse(response).await;
        });
        None
    }
}

/// Whether an SDP offer (a PBX's INVITE body) has audio in a codec the switch carries to
/// WhatsApp (Opus, PCMU, PCMA). An INVITE without an offer has none.
pub(crate) fn offer_usable(body: &[u8]) -> bool {
    crate::sdp::Sdp::parse(body)
        .ok()
        .and_then(|sdp| sdp.audio().ok().flatten())
        .is_some_and(|a| {
            a.formats
                .iter()
                .any(|f| Codec::from_name(&f.name).is_some())
        })
}

/// The response refusing `invite` for `blocked`, with its status and `Reason`, tag `tag`.
pub(crate) fn refusal(invite: &SipMessage, blocked: Blocked, tag: &str) -> SipMessage {
    let (code, phrase) = blocked.sip_status();
    MessageBuilder::response_to(invite, code, &format!("{phrase} - {blocked}"), Some(tag))
        .header(HeaderName::Reason, blocked.sip_reason())
        .build()
}

#[cfg(test)]
mod tests;

/// The configured trunks' names, for an error that asks for one.
fn trunk_names(trunks: &[crate::config::SipTrunk]) -> String {
    trunks
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
