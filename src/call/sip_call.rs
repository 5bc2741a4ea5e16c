//! SIP calls through the B2BUA: the ingress that admits INVITEs, and the per-call actor that
//! runs a call's [`Bridge`].
//!
//! [`SipIngress`] is the transaction user of every SIP listener of the node. It routes each
//! event by Call-ID to the call that owns it (both legs' Call-IDs map to the same call), and
//! decides on new INVITEs: where they come from (`accept_from`, inbound digest), where they
//! go (routes, trunk health and limits), and whether the node takes the call at all
//! (`Calls::start`). A refused INVITE gets its answer at once; an admitted one becomes a
//! call whose [`BridgeActor`] is a child of the call's supervisor.
//!
//! Events that arrive while a call's actor is starting are kept (bounded) and handed over
//! when it starts, so a CANCEL right behind the INVITE is never lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;

use super::bic::{BicContext, BicStart, CalleeOut, MetaSide, WaEvent, WhatsAppCallee};
use super::media::MediaMsg;
use super::supervisor::CallMsg;
#[cfg(any(test, feature = "fault-injection"))]
use super::Fault;
use super::{CallOffer, CallRefused, Calls};
use crate::config::{Config, Transport as ConfigTransport};
use crate::media::shard::Side;
use crate::meta::graph::CallAction;
use crate::permission::service::PermissionError;
use crate::routing::{NoRoute, SipRouter};
use crate::sip::auth::{self, Algorithm, NonceIssuer};
use crate::sip::b2bua::{
    dialled_user, Action, Anchor, Bridge, BridgeConfig, Credentials, Leg, Progress, Target,
};
use crate::sip::build::MessageBuilder;
use crate::sip::core::{CoreEvent, ServerId, SipCommand};
use crate::sip::header::NameAddr;
use crate::sip::msg::{HeaderName, Method, SipMessage};
use crate::sip::transport::{Kind, SipHandle, SipUser};
use crate::sip::trunk::TrunkHealth;
use crate::store::{Direction, HangupParty};

/// The WhatsApp user of a call delivered to SIP, as the trunk learns it.
#[derive(Debug, Clone)]
pub struct WhatsAppCaller {
    /// Meta's call id.
    pub wa_call_id: String,
    /// The customer's WhatsApp number (digits).
    pub wa_id: String,
    /// Their WhatsApp profile name.
    pub name: Option<String>,
    /// The business number called (digits).
    pub business_number: String,
}

impl WhatsAppCaller {
    fn uri(&self) -> String {
        format!("sip:+{}@whatsapp.invalid", self.wa_id)
    }

    /// `"Name" <sip:+wa_id@whatsapp.invalid>`.
    fn asserted_identity(&self) -> String {
        match &self.name {
            Some(n) => format!("\"{}\" <{}>", display_safe(n), self.uri()),
            None => format!("<{}>", self.uri()),
        }
    }

    /// The INVITE leg A would have sent: the customer calls the business number, offering
    /// `codecs` (the first trunk's, in its order) and telephone-events.
    fn invite(&self, seed: u64, codecs: &[String]) -> SipMessage {
        let mut pts = Vec::new();
        let mut maps = String::new();
        for c in codecs {
            match c.to_ascii_lowercase().as_str() {
                "opus" => {
                    pts.push("111");
                    maps.push_str("a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n");
                }
                "pcmu" => {
                    pts.push("0");
                    maps.push_str("a=rtpmap:0 PCMU/8000\r\n");
                }
                "pcma" => {
                    pts.push("8");
                    maps.push_str("a=rtpmap:8 PCMA/8000\r\n");
                }
                _ => {}
            }
        }
        pts.push("101");
        maps.push_str("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n");
        let sdp = format!(
            "v=0\r\no=waswitch {seed} 1 IN IP4 0.0.0.0\r\ns=WhatsApp call\r\nc=IN IP4 0.0.0.0\r\n\
             t=0 0\r\nm=audio 9 RTP/AVP {}\r\n{maps}a=ptime:20\r\na=sendrecv\r\n",
            pts.join(" ")
        );
        let to = format!("<sip:{}@whatsapp.invalid>", self.business_number);
        let from = match &self.name {
            Some(n) => format!("\"{}\" <{}>;tag={seed:x}w", display_safe(n), self.uri()),
            None => format!("<{}>;tag={seed:x}w", self.uri()),
        };
        MessageBuilder::request(
            Method::Invite,
            &format!("sip:{}@whatsapp.invalid", self.business_number),
        )
        .header(
            HeaderName::Via,
            format!("SIP/2.0/TLS whatsapp.invalid;branch=z9hG4bK{seed:x}w"),
        )
        .header(HeaderName::MaxForwards, "70")
        .header(HeaderName::From, from)
        .header(HeaderName::To, to)
        .header(HeaderName::CallId, format!("wa-{seed:x}@waswitch"))
        .header(HeaderName::CSeq, "1 INVITE")
        .header(HeaderName::Contact, format!("<{}>", self.uri()))
        .body("application/sdp", sdp)
        .build()
    }
}

/// A profile name as a quoted display name: no quotes, backslashes or line breaks.
fn display_safe(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '"' | '\\' | '\r' | '\n'))
        .take(64)
        .collect()
}

/// Events kept for a call whose actor is still starting; more are dropped (the peer
/// retransmits).
const MAX_PENDING_EVENTS: usize = 32;
/// How long an inbound digest nonce stays valid.
const NONCE_LIFETIME_SECS: u64 = 300;

/// Where events for a Call-ID go.
enum Route {
    /// The call is starting; its events wait here.
    Pending(Vec<CoreEvent>),
    /// The call's actor.
    Call(ActorRef<BridgeMsg>),
}

/// Calls in progress per trunk (for `max_calls`), indexed like the configured trunks.
#[derive(Debug, Clone)]
struct TrunkLoad(Arc<Vec<AtomicUsize>>);

impl TrunkLoad {
    fn new(trunks: usize) -> Self {
        Self(Arc::new((0..trunks).map(|_| AtomicUsize::new(0)).collect()))
    }

    fn get(&self, trunk: usize) -> usize {
        self.0.get(trunk).map_or(0, |n| n.load(Ordering::Relaxed))
    }

    fn add(&self, trunk: usize) {
        if let Some(n) = self.0.get(trunk) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove(&self, trunk: usize) {
        if let Some(n) = self.0.get(trunk) {
            let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }
}

/// The listeners' handles, known once they are bound.
#[derive(Debug, Clone, Default)]
pub struct SipHandles {
    /// The UDP listener.
    pub udp: Option<SipHandle>,
    /// The TCP listener.
    pub tcp: Option<SipHandle>,
    /// The TLS listener.
    pub tls: Option<SipHandle>,
}

impl SipHandles {
    fn for_transport(&self, t: ConfigTransport) -> Option<&SipHandle> {
        match t {
            ConfigTransport::Udp => self.udp.as_ref(),
            ConfigTransport::Tcp => self.tcp.as_ref(),
            ConfigTransport::Tls => self.tls.as_ref(),
        }
    }
}

struct IngressInner {
    calls: Calls,
    router: SipRouter,
    bridge: BridgeConfig,
    health: TrunkHealth,
    load: TrunkLoad,
    table: Arc<DashMap<Bytes, Route>>,
    handles: OnceLock<SipHandles>,
    nonces: NonceIssuer,
    /// The address written in Contact when a listener is bound to a wildcard address.
    advertised: std::net::IpAddr,
    /// Business-initiated calls from PBXs (set when WhatsApp calling is configured).
    bic: OnceLock<BicContext>,
}

/// The transaction user of the node's SIP listeners: admits SIP calls and routes their
/// events. Cheap to clone.
#[derive(Clone)]
pub struct SipIngress {
    inner: Arc<IngressInner>,
}

/// What a SIP call's actor starts with (carried in its [`CallOffer`]).
pub struct BridgeSetup {
    bridge: Bridge,
    /// Leg A's listener; `None`: leg A is a WhatsApp call.
    a: Option<SipHandle>,
    b: Vec<Option<SipHandle>>,
    /// Configured trunk index of each target.
    trunk_index: Vec<usize>,
    a_call_id: Bytes,
    table: Arc<DashMap<Bytes, Route>>,
    load: TrunkLoad,
    /// Leg B is a WhatsApp customer (a business-initiated call).
    wa_b: Option<BicStart>,
    /// Leg A is a WhatsApp customer called first (an API callback): leg B is called
    /// once the customer answers.
    callback: Option<BicStart>,
}

impl BridgeSetup {
    /// The trunk the call is offered first.
    pub fn first_trunk(&self) -> Option<String> {
        self.bridge.targets().first().map(|t| t.trunk.clone())
    }
}

/// The [`BridgeSetup`] of a SIP call, taken once by its supervisor.
#[derive(Clone, Default)]
pub struct SipStart(Arc<Mutex<Option<BridgeSetup>>>);

impl SipStart {
    /// Wraps a setup for its call's supervisor.
    pub fn new(setup: BridgeSetup) -> Self {
        Self(Arc::new(Mutex::new(Some(setup))))
    }

    /// Takes the setup (the first caller gets it).
    pub fn take(&self) -> Option<BridgeSetup> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl std::fmt::Debug for SipStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SipStart")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_u64() -> u64 {
    let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
    hi ^ lo
}

impl SipIngress {
    /// The ingress for `config`'s trunks and routes, admitting calls into `calls`.
    pub fn new(config: &Config, calls: Calls, health: TrunkHealth) -> Self {
        let router = SipRouter::new(config.trunks.clone(), config.routes.clone());
        let load = TrunkLoad::new(config.trunks.len());
        Self {
            inner: Arc::new(IngressInner {
                calls,
                bridge: BridgeConfig {
                    timers: config.sip.timers,
                    ring_timeout: config.sip.ring_timeout,
                    session_expires: config.sip.session_expires,
                },
                router,
                health,
                load,
                table: Arc::new(DashMap::new()),
                handles: OnceLock::new(),
                nonces: NonceIssuer::new(
                    &config.node_id,
                    &uuid::Uuid::new_v4().to_string(),
                    NONCE_LIFETIME_SECS,
                ),
                advertised: config.media.ip,
                bic: OnceLock::new(),
            }),
        }
    }

    /// Whether SIP calls are routed at all (some route is configured).
    pub fn routes_calls(&self) -> bool {
        self.inner.router.has_routes()
    }

    /// Takes business-initiated calls: an INVITE from a trunk whose From is one of the
    /// business's WhatsApp numbers calls the customer its Request-URI names.
    pub fn set_bic(&self, bic: BicContext) -> Result<(), crate::once::SetTwice> {
        crate::once::set(&self.inner.bic, bic, "the business-call context")
    }

    /// Whether the ingress takes any SIP call (routes, or business-initiated calls).
    pub fn takes_calls(&self) -> bool {
        self.routes_calls() || self.inner.bic.get().is_some()
    }

    /// Gives the ingress the listeners' handles, once they are bound.
    pub fn set_handles(&self, handles: SipHandles) -> Result<(), crate::once::SetTwice> {
        crate::once::set(&self.inner.handles, handles, "the SIP listeners' handles")
    }

    /// Call-IDs currently routed to calls (both legs of every call).
    pub fn routed(&self) -> usize {
        self.inner.table.len()
    }

    fn contact(&self, handle: &SipHandle) -> String {
        let local = handle.local_addr();
        let ip = if local.ip().is_unspecified() {
            self.inner.advertised
        } else {
            local.ip()
        };
        let addr = SocketAddr::new(ip, local.port());
        match handle.kind() {
            Kind::Udp => format!("sip:waswitch@{addr}"),
            Kind::Tcp => format!("sip:waswitch@{addr};transport=tcp"),
            Kind::Tls => format!("sip:waswitch@{addr};transport=tls"),
        }
    }

    /// The bridge targets of configured trunks `indexes` reachable through a listener, with
    /// the handles reaching them and their configured indexes; `headers` gives each
    /// trunk's extra INVITE headers.
    fn targets(
        &self,
        handles: &SipHandles,
        indexes: &[usize],
        headers: impl Fn(&crate::config::SipTrunk) -> Vec<(HeaderName, String)>,
    ) -> (Vec<Target>, Vec<Option<SipHandle>>, Vec<usize>) {
        let trunks = self.inner.router.trunks();
        let mut targets = Vec::with_capacity(indexes.len());
        let mut b_handles = Vec::with_capacity(indexes.len());
        let mut kept = Vec::with_capacity(indexes.len());
        for &t in indexes {
            let trunk = &trunks[t];
            let Some(handle) = handles.for_transport(trunk.transport) else {
                continue;
            };
            let ip = match &trunk.uri.host {
                crate::sip::uri::Host::V4(a) => std::net::IpAddr::V4(*a),
                crate::sip::uri::Host::V6(a) => std::net::IpAddr::V6(*a),
                _ => continue,
            };
            let addr = SocketAddr::new(ip, trunk.uri.port.unwrap_or(5060));
            let hostport = match trunk.uri.port {
                Some(p) => format!("{}:{p}", trunk.uri.host),
                None => trunk.uri.host.to_string(),
            };
            let hostport = match trunk.transport {
                ConfigTransport::Udp => hostport,
                t => format!("{hostport};transport={}", t.as_str()),
            };
            targets.push(Target {
                trunk: trunk.name.clone(),
                addr,
                hostport,
                user: trunk.uri.user.clone(),
                contact: self.contact(handle),
                credentials: trunk.credentials.as_ref().map(|(u, p)| Credentials {
                    username: u.clone(),
                    password: p.clone(),
                }),
                invite_timeout: trunk.invite_timeout,
                headers: headers(trunk),
            });
            b_handles.push(Some(handle.clone()));
            kept.push(t);
        }
        (targets, b_handles, kept)
    }

    /// A WhatsApp user's call delivered through the B2BUA to the trunks of route `route`:
    /// the WhatsApp side stands in for leg A (a caller whose INVITE carries the customer's
    /// identity, the business number as the dialled user, and `sdp`, the codecs the switch
    /// offers the trunk); leg B is an ordinary SIP call to the trunks in order.
    pub fn whatsapp_bridge(
        &self,
        route: &str,
        caller: &WhatsAppCaller,
    ) -> Result<BridgeSetup, (u16, &'static str)> {
        let inner = &self.inner;
        let handles = inner
            .handles
            .get()
            .ok_or((503, "SIP listeners not ready"))?;
        let trunks = inner.router.trunks();
        let indexes = inner
            .router
            .named(route, |t| {
                let trunk = &trunks[t];
                inner.health.usable(&trunk.name)
                    && trunk
                        .max_calls
                        .is_none_or(|max| inner.load.get(t) < max as usize)
                    && handles.for_transport(trunk.transport).is_some()
            })
            .map_err(|e| match e {
                NoRoute::AllTrunksUnavailable => (503, "no trunk available"),
                _ => (404, "no such route"),
            })?;
        self.bridge_from_whatsapp(handles, &indexes, caller, None)
    }

    /// A bridge with `caller` as leg A and trunks `indexes` (configured order) as leg B;
    /// `user` is called at each trunk instead of its own user or the business number.
    fn bridge_from_whatsapp(
        &self,
        handles: &SipHandles,
        indexes: &[usize],
        caller: &WhatsAppCaller,
        user: Option<&str>,
    ) -> Result<BridgeSetup, (u16, &'static str)> {
        let inner = &self.inner;
        let trunks = inner.router.trunks();
        let identity = |trunk: &crate::config::SipTrunk| {
            if !trunk.whatsapp_identity {
                return Vec::new();
            }
            vec![
                (HeaderName::PAssertedIdentity, caller.asserted_identity()),
                (
                    HeaderName::Other(Bytes::from_static(b"X-WA-Call-Id")),
                    caller.wa_call_id.clone(),
                ),
                (
                    HeaderName::Other(Bytes::from_static(b"X-WA-Business-Number")),
                    caller.business_number.clone(),
                ),
                (
                    HeaderName::Other(Bytes::from_static(b"X-WA-Channel")),
                    "whatsapp-voice".to_string(),
                ),
            ]
        };
        let (mut targets, b_handles, indexes) = self.targets(handles, indexes, identity);
        if let Some(user) = user {
            for t in &mut targets {
                t.user = Some(user.to_string());
            }
        }
        if targets.is_empty() {
            return Err((503, "no trunk reachable"));
        }
        let seed = random_u64();
        let invite = caller.invite(seed, &trunks[indexes[0]].codecs);
        let a_call_id = invite
            .header(&HeaderName::CallId)
            .map(|h| h.value.clone())
            .unwrap_or_default();
        let bridge = Bridge::start(
            inner.bridge.clone(),
            seed,
            ServerId::detached(0),
            invite,
            SocketAddr::from(([127, 0, 0, 1], 9)),
            true,
            "sip:whatsapp@whatsapp.invalid".into(),
            targets,
        )
        .map_err(|_| (500, "the WhatsApp side could not start a bridge"))?;
        let mut bridge = bridge;
        bridge.set_whatsapp_a();
        Ok(BridgeSetup {
            bridge,
            a: None,
            b: b_handles,
            trunk_index: indexes,
            a_call_id,
            table: Arc::clone(&inner.table),
            load: inner.load.clone(),
            wa_b: None,
            callback: None,
        })
    }

    /// A new INVITE: decide, and either answer it now or start its call.
    fn new_call(
        &self,
        server: ServerId,
        invite: SipMessage,
        from: SocketAddr,
        origin: &SipHandle,
    ) -> Option<SipCommand> {
        let inner = &self.inner;
        let refuse = |code: u16, reason: &str, extra: Option<(HeaderName, String)>| {
            let tag = format!("{:x}", random_u64());
            let mut b = MessageBuilder::response_to(&invite, code, reason, Some(&tag));
            if let Some((name, value)) = extra {
                b = b.header(name, value);
            }
            Some(SipCommand::Respond {
                server,
                response: b.build(),
            })
        };
        let Some(handles) = inner.handles.get() else {
            return refuse(503, "Service Unavailable - starting", None);
        };
        let Some(ingress) = inner.router.ingress(from.ip()) else {
            tracing::info!(%from, "INVITE from an address no trunk accepts");
            return refuse(403, "Forbidden - source address not accepted", None);
        };
        let trunk = &inner.router.trunks()[ingress];
        if let Some((user, password)) = &trunk.inbound_credentials {
            let now = unix_now();
            let presented = invite
                .headers_named(&HeaderName::ProxyAuthorization)
                .map(|h| h.value.clone())
                .next();
            let verdict = presented.as_ref().map(|value| {
                auth::verify(value, "INVITE", &inner.nonces, now, |u| {
                    (u == user).then(|| password.clone())
                })
            });
            match verdict {
                Some(Ok(_)) => {}
                other => {
                    let stale = matches!(other, Some(Err(auth::AuthError::Stale)));
                    if let Some(Err(e)) = &other {
                        tracing::info!(%from, trunk = %trunk.name, error = %e, "INVITE credentials refused");
                    }
                    let challenge = inner.nonces.challenge(now, Algorithm::Md5, stale);
                    return refuse(
                        407,
                        "Proxy Authentication Required",
                        Some((HeaderName::ProxyAuthenticate, challenge)),
                    );
                }
            }
        }
        if let Some(bic) = inner.bic.get().filter(|_| trunk.business_calls) {
            let from_user = invite
                .header(&HeaderName::From)
                .and_then(|h| NameAddr::parse(&h.value).ok())
                .and_then(|a| crate::sip::uri::SipUri::parse(&a.uri).ok())
                .and_then(|u| u.user);
            if let Some(number) = from_user.as_deref().and_then(|u| bic.number(u)) {
                let trunk = trunk.name.clone();
                return self.business_call(server, invite, from, origin, trunk, number.clone());
            }
        }
        let user = dialled_user(&invite).unwrap_or_default();
        let trunks = inner.router.trunks();
        let selected = inner.router.select(&user, ingress, |t| {
            let trunk = &trunks[t];
            inner.health.usable(&trunk.name)
                && trunk
                    .max_calls
                    .is_none_or(|max| inner.load.get(t) < max as usize)
                && handles.for_transport(trunk.transport).is_some()
        });
        let indexes = match selected {
            Ok(t) => t,
            Err(NoRoute::NoMatch | NoRoute::UnknownSource) => {
                return refuse(404, "Not Found - no route", None)
            }
            Err(NoRoute::AllTrunksUnavailable) => {
                metrics::counter!(crate::telemetry::CALLS_REFUSED_TOTAL, "reason" => "no_trunk")
                    .increment(1);
                return refuse(
                    503,
                    "Service Unavailable - no trunk available",
                    Some((HeaderName::RetryAfter, "30".into())),
                );
            }
        };
        let (targets, b_handles, indexes) = self.targets(handles, &indexes, |_| Vec::new());
        let a_call_id = invite
            .header(&HeaderName::CallId)
            .map(|h| h.value.clone())
            .unwrap_or_default();
        let caller = invite
            .header(&HeaderName::From)
            .and_then(|h| NameAddr::parse(&h.value).ok())
            .map(|a| a.uri);
        let bridge = match Bridge::start(
            inner.bridge.clone(),
            random_u64(),
            server,
            invite.clone(),
            from,
            origin.is_reliable(),
            self.contact(origin),
            targets,
        ) {
            Ok(b) => b,
            Err((refusal, tag)) => {
                return Some(SipCommand::Respond {
                    server,
                    response: refusal.response(&invite, &tag),
                })
            }
        };
        inner
            .table
            .insert(a_call_id.clone(), Route::Pending(Vec::new()));
        let setup = BridgeSetup {
            bridge,
            a: Some(origin.clone()),
            b: b_handles,
            trunk_index: indexes,
            a_call_id: a_call_id.clone(),
            table: Arc::clone(&inner.table),
            load: inner.load.clone(),
            wa_b: None,
            callback: None,
        };
        let mut offer = CallOffer::new(Direction::SipTransit);
        offer.sip_call_id = Some(String::from_utf8_lossy(&a_call_id).into_owned());
        offer.business_number = caller;
        offer.sip = Some(SipStart::new(setup));
        let calls = inner.calls.clone();
        let table = Arc::clone(&inner.table);
        let origin = origin.clone();
        tokio::spawn(async move {
            let refused = match calls.start(offer).await {
                Ok(_) => return,
                Err(e) => e,
            };
            table.remove(&a_call_id);
            let (code, reason) = match refused {
                CallRefused::Draining => (503, "Service Unavailable - draining"),
                CallRefused::Overloaded => (503, "Service Unavailable - call limit"),
                CallRefused::Setup(_) => (500, "Server Internal Error - call setup failed"),
            };
            let tag = format!("{:x}", random_u64());
            let response = MessageBuilder::response_to(&invite, code, reason, Some(&tag))
                .header(HeaderName::RetryAfter, "5")
                .build();
            origin.send(SipCommand::Respond { server, response }).await;
        });
        None
    }
}

/// An API callback: call a customer on WhatsApp, then bridge them to a SIP destination.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackRequest {
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
pub enum CallbackRefused {
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
    Blocked(crate::permission::Blocked),
    /// The permission could not be checked.
    #[error("{0}")]
    Permission(PermissionError),
    /// The node did not admit the call.
    #[error("{0}")]
    Refused(CallRefused),
}

impl SipIngress {
    /// Calls the customer on WhatsApp for `req.business_number` (policy and permission
    /// checked, and the permission reserved, first); when they answer, calls
    /// `req.user` at the destination trunk(s) and bridges the two. The call's id.
    pub async fn place_callback(
        &self,
        req: &CallbackRequest,
    ) -> Result<super::CallId, CallbackRefused> {
        let inner = &self.inner;
        let bic = inner.bic.get().ok_or(CallbackRefused::NotEnabled)?.clone();
        let number = bic
            .number(&req.business_number)
            .cloned()
            .ok_or_else(|| CallbackRefused::UnknownNumber(req.business_number.clone()))?;
        let customer = crate::number::e164(&req.wa_id, Some(&number.country))
            .map_err(CallbackRefused::BadCustomer)?;
        let handles = inner.handles.get().ok_or(CallbackRefused::NoTrunk)?;
        let trunks = inner.router.trunks();
        let usable = |t: usize| {
            let trunk = &trunks[t];
            !trunk.pstn
                && inner.health.usable(&trunk.name)
                && trunk
                    .max_calls
                    .is_none_or(|max| inner.load.get(t) < max as usize)
                && handles.for_transport(trunk.transport).is_some()
        };
        let indexes = match (&req.trunk, &req.route) {
            (Some(name), None) => {
                let t = trunks
                    .iter()
                    .position(|t| &t.name == name)
                    .ok_or_else(|| CallbackRefused::BadDestination(format!("no trunk {name:?}")))?;
                if trunks[t].pstn {
                    metrics::counter!(crate::telemetry::CALLS_BLOCKED_TOTAL, "reason" => "pstn")
                        .increment(1);
                    return Err(CallbackRefused::Blocked(crate::permission::Blocked::Pstn));
                }
                if !usable(t) {
                    return Err(CallbackRefused::NoTrunk);
                }
                vec![t]
            }
            (None, Some(route)) => match inner.router.named(route, usable) {
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
        let id = super::CallId::new();
        let caller = WhatsAppCaller {
            wa_call_id: String::new(),
            wa_id: customer.clone(),
            name: None,
            business_number: number.display_number.clone(),
        };
        let mut setup = self
            .bridge_from_whatsapp(handles, &indexes, &caller, req.user.as_deref())
            .map_err(|_| CallbackRefused::NoTrunk)?;
        let permit = match bic.admit(&number, &customer, id.as_str()).await {
            Ok(p) => p,
            Err(PermissionError::Blocked(b)) => return Err(CallbackRefused::Blocked(b)),
            Err(e) => return Err(CallbackRefused::Permission(e)),
        };
        setup.callback = Some(BicStart {
            graph: Arc::clone(&bic.graph),
            phone_number_id: number.phone_number_id.clone(),
            customer: customer.clone(),
            call_id: id.to_string(),
            permit: permit.clone(),
            ring_timeout: inner.bridge.ring_timeout,
        });
        let mut offer = CallOffer::new(Direction::BusinessInitiated);
        offer.business_number = Some(number.display_number.clone());
        offer.customer_wa_id = Some(customer);
        offer.trunk = setup.first_trunk();
        offer.sip = Some(SipStart::new(setup));
        offer.permit = Some(permit.clone());
        match inner.calls.start_as(id, offer).await {
            Ok(id) => Ok(id),
            Err(e) => {
                permit.release("not admitted");
                Err(CallbackRefused::Refused(e))
            }
        }
    }

    /// A PBX calls a customer on WhatsApp for business number `number`: the
    /// Request-URI's user is the customer. The policy and the customer's permission are
    /// checked (and the permission reserved) before the call is admitted; a refusal gets
    /// its precise status and `Reason`, and is in the audit trail.
    fn business_call(
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
        let tag = format!("{:x}", random_u64());
        let respond = |response: SipMessage| Some(SipCommand::Respond { server, response });
        let pstn = matches!(
            &invite.start,
            crate::sip::msg::StartLine::Request { uri, .. } if uri.len() >= 4 && uri[..4].eq_ignore_ascii_case(b"tel:")
        );
        if pstn {
            metrics::counter!(crate::telemetry::CALLS_BLOCKED_TOTAL, "reason" => "pstn")
                .increment(1);
            return respond(super::bic::refusal(
                &invite,
                crate::permission::Blocked::Pstn,
                &tag,
            ));
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
                let warning = format!(
                    "399 waswitch \"{}\"",
                    super::bic::safe_phrase(&e.to_string())
                );
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
        if !super::bic::offer_usable(&invite.body) {
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
            trunk: super::bic::WHATSAPP_TRUNK.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            hostport: "whatsapp.invalid".into(),
            user: Some(customer.clone()),
            contact: self.contact(origin),
            credentials: None,
            // Meta's answer to `connect` (the Graph API's own time limit applies first).
            invite_timeout: std::time::Duration::from_secs(30),
            headers: Vec::new(),
        };
        let a_call_id = invite
            .header(&HeaderName::CallId)
            .map(|h| h.value.clone())
            .unwrap_or_default();
        let bridge = match Bridge::start(
            inner.bridge.clone(),
            random_u64(),
            server,
            invite.clone(),
            from,
            origin.is_reliable(),
            self.contact(origin),
            vec![target],
        ) {
            Ok(b) => b,
            Err((refusal, tag)) => return respond(refusal.response(&invite, &tag)),
        };
        inner
            .table
            .insert(a_call_id.clone(), Route::Pending(Vec::new()));
        let table = Arc::clone(&inner.table);
        let load = inner.load.clone();
        let calls = inner.calls.clone();
        let origin = origin.clone();
        let ring_timeout = inner.bridge.ring_timeout;
        tokio::spawn(async move {
            let id = super::CallId::new();
            let refuse = |response: SipMessage| {
                table.remove(&a_call_id);
                let origin = origin.clone();
                async move { origin.send(SipCommand::Respond { server, response }).await }
            };
            let permit = match bic.admit(&number, &customer, id.as_str()).await {
                Ok(p) => p,
                Err(PermissionError::Blocked(blocked)) => {
                    tracing::info!(call_id = %id, %customer, reason = blocked.as_str(), "business-initiated call refused");
                    refuse(super::bic::refusal(&invite, blocked, &tag)).await;
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
                bridge,
                a: Some(origin.clone()),
                b: vec![None],
                trunk_index: Vec::new(),
                a_call_id: a_call_id.clone(),
                table: Arc::clone(&table),
                load,
                wa_b: Some(BicStart {
                    graph: Arc::clone(&bic.graph),
                    phone_number_id: number.phone_number_id.clone(),
                    customer: customer.clone(),
                    call_id: id.to_string(),
                    permit: permit.clone(),
                    ring_timeout,
                }),
                callback: None,
            };
            let mut offer = CallOffer::new(Direction::BusinessInitiated);
            offer.sip_call_id = Some(String::from_utf8_lossy(&a_call_id).into_owned());
            offer.business_number = Some(number.display_number.clone());
            offer.customer_wa_id = Some(customer);
            offer.trunk = Some(trunk);
            offer.sip = Some(SipStart::new(setup));
            offer.permit = Some(permit.clone());
            let refused = match calls.start_as(id, offer).await {
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

impl SipUser for SipIngress {
    fn on_event(&self, event: CoreEvent, origin: &SipHandle) -> Option<SipCommand> {
        let call_id = event.call_id()?;
        let event = match self.inner.table.get_mut(&call_id) {
            Some(mut route) => match &mut *route {
                Route::Pending(queue) => {
                    if queue.len() < MAX_PENDING_EVENTS {
                        queue.push(event);
                    }
                    return None;
                }
                Route::Call(actor) => match actor.send_message(BridgeMsg::Sip(event)) {
                    Ok(()) => return None,
                    Err(ractor::MessagingErr::SendErr(BridgeMsg::Sip(event))) => event,
                    Err(_) => return None,
                },
            },
            None => event,
        };
        // Nobody owns this Call-ID (any more).
        self.inner
            .table
            .remove_if(&call_id, |_, r| matches!(r, Route::Call(_)));
        match event {
            CoreEvent::Request {
                server,
                request,
                from,
            } => {
                let in_dialog = request
                    .header(&HeaderName::To)
                    .and_then(|h| NameAddr::parse(&h.value).ok())
                    .is_some_and(|a| a.tag().is_some());
                if request.method() == Some(&Method::Invite) && !in_dialog {
                    self.new_call(server, request, from, origin)
                } else {
                    let response = MessageBuilder::response_to(
                        &request,
                        481,
                        "Call/Transaction Does Not Exist",
                        None,
                    )
                    .build();
                    Some(SipCommand::Respond { server, response })
                }
            }
            // A 2xx to an INVITE of a call that is gone (it crossed our CANCEL after the
            // call's actor failed, or a retransmission outlived the call): acknowledged and
            // hung up, so the far end is not left holding a call (RFC 3261 §13.2.2.4).
            CoreEvent::Response(_, response) => {
                stray_invite_2xx(&response, origin);
                None
            }
            // ACKs and CANCELs for a call that is gone need nothing more: its final
            // response already went out.
            _ => None,
        }
    }
}

/// Acknowledges a 2xx to an INVITE no call owns and hangs it up: ACK then BYE, in that
/// order, from a task. Nothing for anything else, or when the 2xx's Contact is not an
/// address to send to.
fn stray_invite_2xx(response: &SipMessage, origin: &SipHandle) -> Option<()> {
    let status = response.status()?;
    let cseq = response.header(&HeaderName::CSeq)?.value.clone();
    let cseq = std::str::from_utf8(&cseq).ok()?.to_string();
    let (number, method) = cseq.trim().split_once(' ')?;
    if !(200..300).contains(&status) || method.trim() != "INVITE" {
        return None;
    }
    let number: u32 = number.trim().parse().ok()?;
    let contact = NameAddr::parse(&response.header(&HeaderName::Contact)?.value).ok()?;
    let uri = crate::sip::uri::SipUri::parse(&contact.uri).ok()?;
    let ip = match uri.host {
        crate::sip::uri::Host::V4(a) => std::net::IpAddr::V4(a),
        crate::sip::uri::Host::V6(a) => std::net::IpAddr::V6(a),
        _ => return None,
    };
    let to = SocketAddr::new(ip, uri.port.unwrap_or(5060));
    let request = |method: Method, seq: u32| {
        let mut b = MessageBuilder::request(method.clone(), &contact.uri)
            .header(HeaderName::MaxForwards, "70")
            .header(HeaderName::CSeq, format!("{seq} {method}"));
        for name in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
            if let Some(h) = response.header(&name) {
                b = b.header(name, String::from_utf8_lossy(&h.value).into_owned());
            }
        }
        b.build()
    };
    tracing::warn!(%to, "a 2xx for a call that is gone: acknowledged and hung up");
    let ack = request(Method::Ack, number);
    let bye = request(Method::Bye, number.saturating_add(1));
    let origin = origin.clone();
    tokio::spawn(async move {
        origin.send(SipCommand::Ack { request: ack, to }).await;
        origin.send(SipCommand::Request { request: bye, to }).await;
    });
    Some(())
}

/// Hands a business call's waiting SIP events to its bridge before it begins; true when
/// they ended the call (the PBX cancelled), so the customer is never called.
fn pending_ends(bridge: &mut Bridge, now: Instant, pending: Vec<CoreEvent>) -> bool {
    for event in pending {
        bridge.handle_event(now, event);
    }
    bridge.is_done()
}

/// Our WebRTC offer for the customer of a business call, from the call's media actor, and
/// where the media is anchored (WebRTC port, RTP port).
async fn offer_webrtc(media: &Option<ActorRef<MediaMsg>>) -> Result<(String, Anchor), String> {
    let Some(media) = media else {
        return Err("the call has no media".into());
    };
    match media
        .call(MediaMsg::OfferWebRtc, Some(WEBRTC_TIMEOUT))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        _ => Err("media did not answer".into()),
    }
}

/// How long the media actor may take to build a WebRTC offer.
const WEBRTC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Places the call with Meta (Graph `connect` with our offer, tagged with the switch's
/// call id) from a task of its own; the outcome comes back to the bridge. `call_dialled`
/// is in the audit trail before the request leaves; when it cannot be written, Meta is
/// not asked and the call fails with 503.
fn connect(
    myself: &ActorRef<BridgeMsg>,
    start: &BicStart,
    offer: String,
    meta: &Arc<MetaSide>,
    span: &tracing::Span,
) {
    let meta = Arc::clone(meta);
    let graph = Arc::clone(&start.graph);
    let pnid = start.phone_number_id.clone();
    let action = CallAction::Connect {
        to: start.customer.clone(),
        sdp: offer,
        biz_opaque_callback_data: Some(start.call_id.clone()),
    };
    let me = myself.clone();
    let permit = start.permit.clone();
    tokio::spawn(
        async move {
            super::pause_point("before_dial").await;
            if let Err(e) = permit.dialled().await {
                tracing::error!(error = %e, "call_dialled not written to the audit trail; Meta not asked");
                let refused = (
                    503,
                    "Service Unavailable - audit trail not written".to_string(),
                );
                let _ = me.send_message(BridgeMsg::WhatsApp(WaEvent::Connected(Err(refused))));
                return;
            }
            let result = match graph.call_action(&pnid, &action).await {
                Ok(Some(id)) => Ok(id),
                Ok(None) => Err((
                    480,
                    "Temporarily Unavailable - no call id from Meta".to_string(),
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "Meta refused the call");
                    if e.not_carried_out() {
                        permit.not_placed();
                    }
                    Err(super::bic::connect_refusal(&e))
                }
            };
            // The call may have ended (its actor even gone) while Meta was placing it:
            // then Meta's side is ended here, or the customer's phone would ring for nothing.
            if let Ok(id) = &result {
                if meta.placed(id) {
                    let action = CallAction::Terminate {
                        call_id: id.clone(),
                    };
                    if let Err(e) = graph.call_action(&pnid, &action).await {
                        tracing::warn!(error = %e, "Meta was not told the call ended");
                    }
                }
            }
            let _ = me.send_message(BridgeMsg::WhatsApp(WaEvent::Connected(result)));
        }
        .instrument(span.clone()),
    );
}

/// Ends a business-initiated call on Meta's side (Graph `terminate`), from a task of its
/// own so a slow Graph API never holds the call's teardown.
fn terminate(start: &BicStart, wa_call_id: String, span: tracing::Span) {
    let graph = Arc::clone(&start.graph);
    let pnid = start.phone_number_id.clone();
    let action = CallAction::Terminate {
        call_id: wa_call_id,
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(
                async move {
                    if let Err(e) = graph.call_action(&pnid, &action).await {
                        tracing::warn!(error = %e, "Meta was not told the call ended");
                    }
                }
                .instrument(span),
            );
        }
        // The process is ending: Meta ends the call at its own timeout.
        Err(_) => {
            tracing::error!(parent: &span, "Meta not told the call ended: no runtime left")
        }
    }
}

// ---- the per-call actor ------------------------------------------------------------

/// Runs one SIP call's [`Bridge`]; a child of the call's supervisor.
pub struct BridgeActor;

/// What a bridge actor starts with.
pub struct BridgeArgs {
    /// The bridge and its handles.
    pub setup: BridgeSetup,
    /// The call's supervisor.
    pub call: ActorRef<CallMsg>,
    /// The call's media actor (anchors the call's media).
    pub media: Option<ActorRef<MediaMsg>>,
    /// The call's span.
    pub span: tracing::Span,
}

/// Messages of [`BridgeActor`].
#[derive(Debug)]
pub enum BridgeMsg {
    /// A SIP event for this call.
    Sip(CoreEvent),
    /// A deadline of the bridge may have come.
    Timer,
    /// End the call (operator, shutdown); replies once the hangup is sent.
    Hangup {
        /// End cause.
        cause: String,
        /// Reply.
        reply: RpcReplyPort<()>,
    },
    /// Something Meta said about leg B (a business-initiated call's customer).
    WhatsApp(WaEvent),
    /// An API callback's customer has had their time to answer.
    CustomerTimeout,
    /// Makes the actor fail (supervision tests).
    #[cfg(any(test, feature = "fault-injection"))]
    Fault(Fault),
}

/// Leg B of a business-initiated call: the WhatsApp customer.
struct WaB {
    callee: WhatsAppCallee,
    start: BicStart,
    /// Our WebRTC offer, for Graph `connect`.
    offer: String,
}

/// Leg A of an API callback: the WhatsApp customer, called first.
struct Callback {
    start: BicStart,
    /// The media anchor: WebRTC toward the customer, RTP toward the trunk.
    anchor: Anchor,
    /// Meta's call id, once Meta took the call.
    wa_call_id: Option<String>,
    /// The customer answered (leg B is being called).
    answered: bool,
    /// Meta's side is over (or is being ended).
    ended: bool,
}

/// State of a running bridge actor.
pub struct BridgeState {
    bridge: Bridge,
    /// Leg A's listener; `None`: leg A is a WhatsApp call, answered here.
    a: Option<SipHandle>,
    /// Requests answered on the WhatsApp side.
    detached: u64,
    /// The WhatsApp side hears ringback (the PBX rings without early media).
    ringback: bool,
    /// The PBX sent SDP: its early media or its answer's audio reaches the WhatsApp side.
    b_media: bool,
    /// A hangup waiting for the bridge to settle (the trunk's answer to our CANCEL or BYE,
    /// a 2xx crossing the CANCEL hung up) before it is confirmed.
    hangup_reply: Option<RpcReplyPort<()>>,
    b: Vec<Option<SipHandle>>,
    trunk_index: Vec<usize>,
    table: Arc<DashMap<Bytes, Route>>,
    load: TrunkLoad,
    call: ActorRef<CallMsg>,
    media: Option<ActorRef<MediaMsg>>,
    span: tracing::Span,
    routed: Vec<Bytes>,
    /// Configured index of the trunk currently counted in the load.
    counted: Option<usize>,
    timer_at: Option<Instant>,
    /// Leg B is a WhatsApp customer.
    wa_b: Option<WaB>,
    /// Leg A is a WhatsApp customer called first.
    callback: Option<Callback>,
    /// Meta's side of a business-initiated call (either kind).
    meta: Option<Arc<MetaSide>>,
}

impl Actor for BridgeActor {
    type Msg = BridgeMsg;
    type State = BridgeState;
    type Arguments = BridgeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: BridgeArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let setup = args.setup;
        let span = tracing::info_span!(parent: &args.span, "sip_b2bua");
        // Take over the A leg's route; events that came in meanwhile are replayed in order.
        let pending = match setup
            .table
            .insert(setup.a_call_id.clone(), Route::Call(myself.clone()))
        {
            Some(Route::Pending(events)) => events,
            _ => Vec::new(),
        };
        // A business call's waiting events (a CANCEL that came while its permission was
        // checked) are handled before the customer is called; others go through the mailbox.
        let pending = if setup.wa_b.is_some() {
            pending
        } else {
            for event in pending {
                let _ = myself.send_message(BridgeMsg::Sip(event));
            }
            Vec::new()
        };
        let mut state = BridgeState {
            bridge: setup.bridge,
            a: setup.a,
            detached: 0,
            ringback: false,
            b_media: false,
            hangup_reply: None,
            b: setup.b,
            trunk_index: setup.trunk_index,
            table: setup.table,
            load: setup.load,
            call: args.call,
            media: args.media,
            span,
            routed: vec![setup.a_call_id],
            counted: None,
            timer_at: None,
            wa_b: None,
            callback: None,
            meta: None,
        };
        if let Some(start) = setup.callback {
            // An API callback: the customer is called first, with our WebRTC offer; the
            // trunk is called when they answer.
            let offered = offer_webrtc(&state.media).await;
            let (offer, anchor) = offered.map_err(|e| {
                ActorProcessingErr::from(format!("no WebRTC offer for the customer: {e}"))
            })?;
            let meta = Arc::new(MetaSide::default());
            match start.permit.cut_off().await {
                // The permission ended while the call was being set up.
                Some(blocked) => {
                    let _ = state.call.send_message(CallMsg::Hangup {
                        by: HangupParty::Switch,
                        cause: blocked.as_str().to_string(),
                        reply: None,
                    });
                }
                None => {
                    connect(&myself, &start, offer, &meta, &state.span);
                    // Meta's own ring time normally ends an unanswered call first; this
                    // holds if its webhook never comes. Placing the call may take a Graph
                    // API round trip first.
                    myself.send_after(start.ring_timeout + WEBRTC_TIMEOUT, || {
                        BridgeMsg::CustomerTimeout
                    });
                }
            }
            state.meta = Some(meta);
            state.callback = Some(Callback {
                start,
                anchor,
                wa_call_id: None,
                answered: false,
                ended: false,
            });
            return Ok(state);
        }
        if let Some(start) = setup.wa_b {
            // A business-initiated call: the WebRTC leg makes our offer for Meta, and the
            // PBX is answered with the plain RTP side of the pair.
            let offered = offer_webrtc(&state.media).await;
            // The permission may have ended between its reservation and now.
            let cut_off = start.permit.cut_off().await;
            let now = Instant::now();
            match offered {
                Ok(_) if pending_ends(&mut state.bridge, now, pending) => {
                    tracing::info!(parent: &state.span, "the PBX gave up before the customer was called");
                }
                Ok(_) if cut_off.is_some() => {
                    if let Some(blocked) = cut_off {
                        let (code, phrase) = blocked.sip_status();
                        state.bridge.hangup_with(
                            now,
                            blocked.as_str(),
                            (code, &format!("{phrase} - {blocked}")),
                            &blocked.sip_reason(),
                        );
                    }
                }
                Ok((offer, anchor)) => {
                    state.meta = Some(Arc::new(MetaSide::default()));
                    state.wa_b = Some(WaB {
                        callee: WhatsAppCallee::new(&format!("{:x}wa", random_u64())),
                        start,
                        offer,
                    });
                    state.bridge.begin(now, Some(anchor.swapped()));
                }
                Err(e) => {
                    tracing::warn!(parent: &state.span, error = %e, "no WebRTC offer for the customer; refusing the call");
                    state.bridge.hangup(now, "media_setup_failed");
                }
            }
            let span = state.span.clone();
            state.run(&myself).instrument(span).await;
            return Ok(state);
        }
        // Anchor the media before the trunk sees the caller's SDP.
        let anchor = match &state.media {
            Some(media) => match media
                .call(MediaMsg::Anchor, Some(super::CALL_RPC_TIMEOUT))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(a)) => a,
                _ => None,
            },
            None => None,
        };
        state.bridge.begin(Instant::now(), anchor);
        let span = state.span.clone();
        state.run(&myself).instrument(span).await;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            BridgeMsg::Sip(event) => state.bridge.handle_event(now, event),
            BridgeMsg::Timer => {
                if state.bridge.poll_timeout().is_some_and(|at| at <= now) {
                    state.bridge.handle_timeout(now);
                }
                state.timer_at = None;
            }
            BridgeMsg::Hangup { cause, reply } => {
                // A permission that ended while the customer was being called (do-not-call,
                // a revocation) refuses the PBX as precisely as a refusal at dialling.
                match crate::permission::Blocked::from_name(&cause) {
                    Some(blocked) => {
                        let (code, phrase) = blocked.sip_status();
                        state.bridge.hangup_with(
                            now,
                            &cause,
                            (code, &format!("{phrase} - {blocked}")),
                            &blocked.sip_reason(),
                        )
                    }
                    None => state.bridge.hangup(now, &cause),
                }
                state.end_callback();
                state.hangup_reply = Some(reply);
            }
            BridgeMsg::CustomerTimeout => {
                let waiting = state
                    .callback
                    .as_ref()
                    .is_some_and(|cb| !cb.answered && !cb.ended);
                if waiting {
                    tracing::info!("the customer did not answer in time");
                    state.end_callback();
                    let _ = state.call.send_message(CallMsg::LegChanged {
                        role: super::LegRole::WhatsApp,
                        state: super::leg::LegState::Ended,
                        cause: Some("no_answer".into()),
                    });
                }
            }
            BridgeMsg::WhatsApp(event) => {
                if matches!(
                    event,
                    WaEvent::Terminated { .. } | WaEvent::Rejected | WaEvent::Connected(Err(_))
                ) {
                    if let Some(meta) = &state.meta {
                        meta.over();
                    }
                }
                if let Some(wa) = state.wa_b.as_mut() {
                    let outs = wa.callee.on_event(event);
                    state.carry_out(&myself, outs);
                } else if state.callback.is_some() {
                    state.callback_event(now, event);
                }
            }
            #[cfg(any(test, feature = "fault-injection"))]
            BridgeMsg::Fault(fault) => fault.trigger("sip_b2bua")?,
        }
        let span = state.span.clone();
        state.run(&myself).instrument(span).await;
        Ok(())
    }

    // No `post_stop`: an actor that panics never runs it, so the state's `Drop` does the
    // closing out, whichever way the actor ends.
}

impl Drop for BridgeState {
    /// Closes the call out on the SIP side however the actor ended. A bridge that has not
    /// settled (its actor failed mid-call) hangs up now: BYE to an answered trunk, CANCEL
    /// to a ringing one, a final response to a SIP caller still waiting, queued to the
    /// listeners without waiting (so it works outside the runtime too). Routes and trunk
    /// load are given back.
    fn drop(&mut self) {
        if !self.bridge.is_done() {
            self.bridge.hangup(Instant::now(), "internal_failure");
            let mut out = Vec::new();
            while let Some(action) = self.bridge.poll_action() {
                // Leg B of a business call is Meta's: ended below.
                if self.wa_b.is_some() && matches!(action, Action::B(..)) {
                    continue;
                }
                let handle = match &action {
                    Action::A(_) => self.a.clone(),
                    Action::B(index, _) => self.b.get(*index).cloned().flatten(),
                    _ => None,
                };
                if let (Some(handle), Action::A(command) | Action::B(_, command)) = (handle, action)
                {
                    out.push((handle, command));
                }
            }
            if !out.is_empty() {
                tracing::warn!(parent: &self.span, commands = out.len(), "SIP bridge failed; hanging up what the trunk still holds");
                for (handle, command) in out {
                    if !handle.try_send(command) {
                        tracing::error!(parent: &self.span, "a hangup toward the trunk could not be queued; the trunk ends the call at its own timeout");
                    }
                }
            }
        }
        self.end_meta();
        for call_id in self.routed.drain(..) {
            self.table.remove(&call_id);
        }
        if let Some(t) = self.counted.take() {
            self.load.remove(t);
        }
    }
}

impl BridgeState {
    /// Carries out what the bridge asks, then re-arms its timer.
    async fn run(&mut self, myself: &ActorRef<BridgeMsg>) {
        while let Some(action) = self.bridge.poll_action() {
            match action {
                Action::A(command) => match &self.a {
                    Some(handle) => {
                        handle.send(command).await;
                    }
                    None => self.whatsapp_side(command),
                },
                Action::B(_, command) if self.wa_b.is_some() => {
                    let outs = match self.wa_b.as_mut() {
                        Some(wa) => wa.callee.on_command(command),
                        None => Vec::new(),
                    };
                    self.carry_out(myself, outs);
                }
                Action::B(index, command) => {
                    if let Some(Some(handle)) = self.b.get(index) {
                        handle.send(command).await;
                    }
                }
                Action::Route(call_id) => {
                    self.table
                        .insert(call_id.clone(), Route::Call(myself.clone()));
                    self.routed.push(call_id);
                }
                Action::Unroute(call_id) => {
                    self.table.remove(&call_id);
                    self.routed.retain(|c| *c != call_id);
                }
                Action::Progress(progress) => self.progress(progress),
                Action::Media(Leg::B, remote) if self.a.is_none() => {
                    // The PBX's audio takes over from ringback.
                    self.b_media = true;
                    self.set_ringback(false);
                    // The WhatsApp side speaks Opus: the trunk's codec decides the path.
                    self.sip_side_media(remote);
                }
                // The WhatsApp side's media is its WebRTC leg's.
                Action::Media(Leg::A, _) | Action::MediaPlan(_) if self.a.is_none() => {}
                // A business-initiated call: the PBX is side B of the media pair, with the
                // codec our answer chose; the customer's side is the WebRTC leg.
                Action::Media(Leg::A, remote) if self.wa_b.is_some() => {
                    let outs = match self.wa_b.as_mut() {
                        Some(wa) => wa.callee.pbx_media(remote),
                        None => Vec::new(),
                    };
                    self.carry_out(myself, outs);
                }
                Action::Media(Leg::B, _) | Action::MediaPlan(_) if self.wa_b.is_some() => {}
                Action::Media(leg, remote) => {
                    if let Some(media) = &self.media {
                        let side = match leg {
                            Leg::A => Side::A,
                            Leg::B => Side::B,
                        };
                        let _ = media.send_message(MediaMsg::Remote(side, remote));
                    }
                }
                Action::MediaPlan(plan) => {
                    if let Some(media) = &self.media {
                        let _ = media.send_message(MediaMsg::Plan(plan.summary()));
                    }
                }
            }
        }
        if self.bridge.is_done() {
            if let Some(reply) = self.hangup_reply.take() {
                let _ = reply.send(());
            }
        }
        let next = self.bridge.poll_timeout();
        if next.is_some() && next != self.timer_at {
            self.timer_at = next;
            if let Some(at) = next {
                let wait = at.saturating_duration_since(Instant::now());
                myself.send_after(wait, || BridgeMsg::Timer);
            }
        }
    }

    /// What the bridge sends leg A when leg A is a WhatsApp call: its INVITE's responses
    /// are reported as progress (the call's supervisor pre-accepts, accepts or rejects);
    /// requests from the trunk (BYE, and re-INVITE, UPDATE or INFO, which never reach
    /// Meta) are answered 200 here, an offer with the WhatsApp side's SDP.
    fn whatsapp_side(&mut self, command: SipCommand) {
        let request = match command {
            SipCommand::Request { request, .. } => request,
            SipCommand::Respond { response, .. } => {
                // The WhatsApp side acknowledges the answer at once (its accept goes to
                // Meta through the call's supervisor), so the bridge acknowledges the trunk.
                let answered = response.status().is_some_and(|c| (200..300).contains(&c))
                    && response
                        .header(&HeaderName::CSeq)
                        .is_some_and(|h| h.value.ends_with(b"INVITE"));
                if answered {
                    let call_id = response
                        .header(&HeaderName::CallId)
                        .map(|h| h.value.clone())
                        .unwrap_or_default();
                    let seq = response
                        .header(&HeaderName::CSeq)
                        .and_then(|h| {
                            std::str::from_utf8(&h.value)
                                .ok()?
                                .split(' ')
                                .next()
                                .map(str::to_string)
                        })
                        .unwrap_or_else(|| "1".into());
                    let ack = MessageBuilder::request(Method::Ack, "sip:waswitch@whatsapp.invalid")
                        .header(HeaderName::CallId, call_id)
                        .header(HeaderName::CSeq, format!("{seq} ACK"))
                        .build();
                    let event = CoreEvent::Ack {
                        request: ack,
                        from: SocketAddr::from(([127, 0, 0, 1], 9)),
                    };
                    self.bridge.handle_event(Instant::now(), event);
                }
                return;
            }
            _ => return,
        };
        self.detached += 1;
        let method = request.method().cloned();
        let mut response = MessageBuilder::response_to(&request, 200, "OK", None);
        if matches!(method, Some(Method::Invite | Method::Update)) && !request.body.is_empty() {
            response = response.body("application/sdp", self.bridge.a_offer().clone());
        }
        let event = CoreEvent::Response(
            crate::sip::core::RequestId::detached(self.detached),
            response.build(),
        );
        self.bridge.handle_event(Instant::now(), event);
    }

    /// What Meta said about an API callback's customer (leg A, called first).
    fn callback_event(&mut self, now: Instant, event: WaEvent) {
        use super::leg::LegState;
        use super::LegRole;
        let Some(cb) = self.callback.as_mut() else {
            return;
        };
        let report = |call: &ActorRef<CallMsg>, state: LegState, cause: Option<String>| {
            let _ = call.send_message(CallMsg::LegChanged {
                role: LegRole::WhatsApp,
                state,
                cause,
            });
        };
        match event {
            WaEvent::Connected(Ok(id)) => {
                tracing::info!(wa_call_id = %id, "Meta took the call");
                cb.wa_call_id = Some(id.clone());
                let _ = self.call.send_message(CallMsg::WaCallId(id));
            }
            WaEvent::Connected(Err((code, why))) => {
                tracing::warn!(code, %why, "Meta refused the callback");
                cb.ended = true;
                let _ = self.call.send_message(CallMsg::Hangup {
                    by: HangupParty::Switch,
                    cause: format!("whatsapp_refused_{code}"),
                    reply: None,
                });
            }
            WaEvent::Answer(sdp) => {
                if let Some(media) = &self.media {
                    let _ = media.send_message(MediaMsg::WebRtcAnswer(sdp));
                }
            }
            WaEvent::Ringing if !cb.answered => report(&self.call, LegState::Ringing, None),
            WaEvent::Accepted if !cb.answered && !cb.ended => {
                cb.answered = true;
                tracing::info!("the customer answered; calling the agent");
                let anchor = cb.anchor;
                report(&self.call, LegState::Answered, None);
                self.bridge.begin(now, Some(anchor));
            }
            WaEvent::Rejected if !cb.answered => {
                cb.ended = true;
                report(&self.call, LegState::Ended, Some("declined".into()));
            }
            WaEvent::Terminated { cause } => {
                let was_ended = cb.ended;
                cb.ended = true;
                if !was_ended {
                    // Meta's failures keep their cause (the permission is given back).
                    let cause = if cb.answered || cause.starts_with("meta_failed") {
                        cause
                    } else {
                        "no_answer".into()
                    };
                    report(&self.call, LegState::Ended, Some(cause));
                }
            }
            _ => {}
        }
    }

    /// Ends an API callback's WhatsApp side (Graph `terminate`), once.
    fn end_callback(&mut self) {
        let Some(cb) = self.callback.as_mut() else {
            return;
        };
        cb.ended = true;
        self.end_meta();
    }

    /// Ends Meta's side of a business call, once, unless Meta ended it (or Meta's id
    /// comes later: the task placing the call ends it then).
    fn end_meta(&self) {
        let start = match (&self.wa_b, &self.callback) {
            (Some(wa), _) => &wa.start,
            (None, Some(cb)) => &cb.start,
            (None, None) => return,
        };
        if let Some(id) = self.meta.as_ref().and_then(|m| m.end()) {
            terminate(start, id, self.span.clone());
        }
    }

    /// Carries out what leg B's WhatsApp callee asks; bridge events are handled at once
    /// (the actions they cause are picked up by [`run`](Self::run)).
    fn carry_out(&mut self, myself: &ActorRef<BridgeMsg>, outs: Vec<CalleeOut>) {
        for out in outs {
            let Some(wa) = self.wa_b.as_ref() else {
                return;
            };
            match out {
                CalleeOut::Bridge(event) => self.bridge.handle_event(Instant::now(), event),
                CalleeOut::Connect => {
                    if let Some(meta) = &self.meta {
                        connect(myself, &wa.start, wa.offer.clone(), meta, &self.span);
                    }
                }
                CalleeOut::Terminate(_) => self.end_meta(),
                CalleeOut::Answer(sdp) => {
                    if let Some(media) = &self.media {
                        let _ = media.send_message(MediaMsg::WebRtcAnswer(sdp));
                    }
                }
                CalleeOut::PbxMedia(remote) => {
                    self.sip_side_media(remote);
                }
                CalleeOut::WaCallId(id) => {
                    tracing::info!(wa_call_id = %id, "Meta took the call");
                    let _ = self.call.send_message(CallMsg::WaCallId(id));
                }
                CalleeOut::Answered => tracing::info!("the customer answered"),
            }
        }
    }

    /// The SIP side's media when the other side is WhatsApp (Opus over WebRTC, side A of
    /// the pair): its codec decides whether the audio passes through or is transcoded.
    fn sip_side_media(&self, remote: crate::media::shard::Remote) {
        let Some(media) = &self.media else {
            return;
        };
        let path = match remote.codec {
            Some(crate::media::transcode::Codec::Opus) => "opus pass-through".to_string(),
            Some(c) => format!("opus <-> {} (transcoded)", c.name()),
            None => "opus <-> ? (no common codec)".to_string(),
        };
        let _ = media.send_message(MediaMsg::Remote(Side::B, remote));
        let _ = media.send_message(MediaMsg::Plan(path));
    }

    fn set_ringback(&mut self, on: bool) {
        if self.ringback == on {
            return;
        }
        self.ringback = on;
        if let Some(media) = &self.media {
            let _ = media.send_message(MediaMsg::Ringback(Side::A, on));
        }
    }

    fn progress(&mut self, progress: Progress) {
        use super::leg::LegState;
        use super::LegRole;
        // The called side: the customer of a business-initiated call, else the trunk.
        let role = if self.wa_b.is_some() {
            LegRole::WhatsApp
        } else {
            LegRole::Business
        };
        let report = |call: &ActorRef<CallMsg>, state: LegState| {
            let _ = call.send_message(CallMsg::LegChanged {
                role,
                state,
                cause: None,
            });
        };
        match progress {
            Progress::Trying { trunk } => {
                tracing::info!(%trunk, "offering the call to a trunk");
                let index = self
                    .bridge
                    .targets()
                    .iter()
                    .position(|t| t.trunk == trunk)
                    .and_then(|i| self.trunk_index.get(i).copied());
                if let Some(old) = self.counted.take() {
                    self.load.remove(old);
                }
                if let Some(t) = index {
                    self.load.add(t);
                    self.counted = Some(t);
                }
                if self.wa_b.is_none() {
                    let _ = self.call.send_message(CallMsg::Routed { trunk });
                }
            }
            Progress::Ringing => {
                // Meta drops a call that carries no media for 20 s: a PBX ringing without
                // early media gets ringback played toward WhatsApp meanwhile.
                if self.a.is_none() && !self.b_media {
                    self.set_ringback(true);
                }
                report(&self.call, LegState::Ringing)
            }
            Progress::Answered => {
                self.set_ringback(false);
                report(&self.call, LegState::Answered)
            }
            Progress::Ended { by, cause } => {
                self.end_callback();
                let whatsapp = self.a.is_none();
                // The PBX refusing a WhatsApp call (busy, declined, no answer) is the
                // business's doing, as much as hanging up is.
                let refused = matches!(
                    cause.as_str(),
                    "busy" | "declined" | "no_answer" | "unallocated_number" | "rejected"
                );
                let bic = self.wa_b.is_some();
                let by = match by {
                    Some(Leg::A) if bic => HangupParty::Business,
                    Some(Leg::B) if bic => HangupParty::Customer,
                    None if bic && refused => HangupParty::Customer,
                    Some(Leg::A) if whatsapp => HangupParty::Customer,
                    Some(Leg::B) if whatsapp => HangupParty::Business,
                    None if whatsapp && refused => HangupParty::Business,
                    Some(Leg::A) => HangupParty::Caller,
                    Some(Leg::B) => HangupParty::Callee,
                    None => HangupParty::Switch,
                };
                let _ = self.call.send_message(CallMsg::BridgeEnded { by, cause });
            }
        }
    }
}
