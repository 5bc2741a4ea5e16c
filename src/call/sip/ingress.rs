//! The transaction user of the node's SIP listeners: routes each SIP event by Call-ID to
//! the call that owns it, and decides on new INVITEs: where they come from (`accept_from`,
//! inbound digest), where they go (routes, trunk health and limits), and whether the node
//! takes the call at all (`Calls::start`). A refused INVITE gets its answer at once; an
//! admitted one becomes a call whose bridge actor is a child of the call's supervisor.
//! INVITEs for WhatsApp customers are admitted in [`admit`](super::admit).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;

use super::bridge::{BridgeMsg, BridgeSetup};
use super::caller::WhatsAppCaller;
use super::{random_u64, Route, TrunkLoad};
use crate::call::leg::LegMsg;
use crate::call::plan::CallPlan;
use crate::call::whatsapp::permit::BicContext;
use crate::call::{CallOffer, CallRefused, Calls};
use crate::config::{Config, Transport as ConfigTransport};
use crate::routing::{Caller, NoRoute, SipRouter};
use crate::sip::auth::{self, Algorithm, NonceIssuer};
use crate::sip::b2bua::{dialled_user, Bridge, BridgeConfig, Credentials, Target};
use crate::sip::build::MessageBuilder;
use crate::sip::core::{CoreEvent, ServerId, SipCommand};
use crate::sip::header::NameAddr;
use crate::sip::msg::{HeaderName, Method, SipMessage};
use crate::sip::transport::{Kind, SipHandle, SipUser};
use crate::sip::trunk::TrunkHealth;
use crate::store::Direction;
use crate::tasks::Background;

/// Events kept for a call whose actor is still starting; more are dropped (the peer
/// retransmits).
const MAX_PENDING_EVENTS: usize = 32;
/// How long an inbound digest nonce stays valid.
const NONCE_LIFETIME_SECS: u64 = 300;

/// The listeners' handles, known once they are bound.
#[derive(Debug, Clone, Default)]
pub(crate) struct SipHandles {
    /// The UDP listener.
    pub udp: Option<SipHandle>,
    /// The TCP listener.
    pub tcp: Option<SipHandle>,
    /// The TLS listener.
    pub tls: Option<SipHandle>,
    /// SIP over WebSocket (agents' browser phones).
    pub ws: Option<SipHandle>,
}

impl SipHandles {
    pub(super) fn for_transport(&self, t: ConfigTransport) -> Option<&SipHandle> {
        match t {
            ConfigTransport::Udp => self.udp.as_ref(),
            ConfigTransport::Tcp => self.tcp.as_ref(),
            ConfigTransport::Tls => self.tls.as_ref(),
        }
    }

    fn for_kind(&self, kind: Kind) -> Option<&SipHandle> {
        match kind {
            Kind::Udp => self.udp.as_ref(),
            Kind::Tcp => self.tcp.as_ref(),
            Kind::Tls => self.tls.as_ref(),
            Kind::Ws | Kind::Wss => self.ws.as_ref(),
        }
    }
}

/// Meta's SIP interface on the node's TLS listener: who Meta is, which numbers it calls
/// over SIP, and where its calls go to become WhatsApp calls.
#[derive(Debug, Clone)]
pub(crate) struct MetaSipIngress {
    /// `[meta.sip]`.
    pub config: crate::config::MetaSip,
    /// Display numbers of the business numbers in SIP mode.
    pub numbers: Vec<String>,
    /// The WhatsApp ingress, which admits the calls.
    pub calls: tokio::sync::mpsc::Sender<crate::call::whatsapp::sip::MetaSipLink>,
}

/// A queue call offered to agents: who, and what their phones' cards show.
#[derive(Debug, Clone)]
pub(crate) struct AgentCall<'a> {
    /// The agents' SIP users: one, or several rung at once (ring-all).
    pub users: &'a [String],
    /// The queue the call waited in.
    pub queue: &'a str,
    /// The IVR path that led there.
    pub ivr_path: &'a str,
    /// Our WebRTC offer, for a phone on a WebSocket (a browser).
    pub webrtc: Option<String>,
    /// How long the phone rings before the call is taken back.
    pub ring_timeout: std::time::Duration,
}

pub(super) struct IngressInner {
    pub(super) calls: Calls,
    pub(super) router: SipRouter,
    pub(super) bridge: BridgeConfig,
    pub(super) health: TrunkHealth,
    pub(super) load: TrunkLoad,
    pub(super) table: Arc<DashMap<Bytes, Route>>,
    pub(super) handles: OnceLock<SipHandles>,
    nonces: NonceIssuer,
    /// The address written in Contact when a listener is bound to a wildcard address.
    advertised: std::net::IpAddr,
    /// Business-initiated calls (set when WhatsApp calling is configured).
    pub(super) bic: OnceLock<BicContext>,
    /// Admissions in progress (each answers its INVITE), and hang-ups of stray answers.
    pub(super) admissions: Background,
    /// The agents' registrar (where queue calls find the agents' phones).
    agents: OnceLock<Arc<crate::sip::registrar::Agents>>,
    /// Meta's SIP interface: its INVITEs become customers' calls.
    meta_sip: OnceLock<MetaSipIngress>,
    /// The business number each configured agent's calls to customers come from.
    agent_numbers: std::collections::HashMap<String, String>,
}

impl IngressInner {
    /// Trunk `t` may take a new call now: its probes say it is up, it is below its call
    /// limit, and a listener speaks its transport.
    pub(super) fn trunk_usable(&self, t: usize, handles: &SipHandles) -> bool {
        let Some(trunk) = self.router.trunks().get(t) else {
            return false;
        };
        self.health.usable(&trunk.name)
            && trunk
                .max_calls
                .is_none_or(|max| self.load.get(t) < max as usize)
            && handles.for_transport(trunk.transport).is_some()
    }
}

/// The transaction user of the node's SIP listeners: admits SIP calls and routes their
/// events. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SipIngress {
    pub(super) inner: Arc<IngressInner>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SipIngress {
    /// The ingress for `config`'s trunks and routes, admitting calls into `calls`.
    pub(crate) fn new(config: &Config, calls: Calls, health: TrunkHealth) -> Self {
        let router = SipRouter::new(config.trunks.clone(), config.routes.clone());
        let load = TrunkLoad::new(config.trunks.len());
        Self {
            inner: Arc::new(IngressInner {
                calls,
                bridge: BridgeConfig {
                    timers: config.sip.timers,
                    ring_timeout: config.sip.ring_timeout,
                    session_expires: config.sip.session_expires,
                    parallel: false,
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
                admissions: Background::new(),
                agents: OnceLock::new(),
                meta_sip: OnceLock::new(),
                agent_numbers: config.agent_business_numbers(),
            }),
        }
    }

    /// Admissions in progress and hang-ups of stray answers: the node waits for them
    /// before it stops its SIP listeners, so each INVITE gets its answer.
    pub(crate) fn admissions(&self) -> &Background {
        &self.inner.admissions
    }

    /// Whether SIP calls are routed at all (some route is configured).
    pub(crate) fn routes_calls(&self) -> bool {
        self.inner.router.has_routes()
    }

    /// Takes business-initiated calls: an INVITE from a trunk whose From is one of the
    /// business's WhatsApp numbers calls the customer its Request-URI names.
    pub(crate) fn set_bic(&self, bic: BicContext) -> Result<(), crate::once::SetTwice> {
        crate::once::set(&self.inner.bic, bic, "the business-call context")
    }

    /// Whether the ingress takes any SIP call (routes, business-initiated calls, Meta's
    /// SIP interface).
    pub(crate) fn takes_calls(&self) -> bool {
        self.routes_calls() || self.inner.bic.get().is_some() || self.inner.meta_sip.get().is_some()
    }

    /// Takes Meta's INVITEs (numbers in SIP mode) on the TLS listener.
    pub(crate) fn set_meta_sip(&self, meta: MetaSipIngress) -> Result<(), crate::once::SetTwice> {
        crate::once::set(&self.inner.meta_sip, meta, "Meta's SIP interface")
    }

    /// A customer's call from Meta's SIP interface (an INVITE with Meta's
    /// `X-FB-External-Domain`): from Meta's addresses over TLS only, to a number in SIP
    /// mode (the Request-URI's user, its parameters set aside); handed to the WhatsApp
    /// ingress, which decides it as it decides a `connect` webhook.
    fn meta_call(
        &self,
        server: ServerId,
        invite: SipMessage,
        from: SocketAddr,
        origin: &SipHandle,
    ) -> Option<SipCommand> {
        let refuse = |code: u16, reason: &str| {
            let tag = format!("{:x}", random_u64());
            Some(SipCommand::Respond {
                server,
                response: MessageBuilder::response_to(&invite, code, reason, Some(&tag)).build(),
            })
        };
        let Some(meta) = self.inner.meta_sip.get() else {
            tracing::info!(%from, "an INVITE in Meta's name, but no number uses Meta's SIP interface");
            return refuse(403, "Forbidden - Meta's SIP interface is not configured");
        };
        if !meta.config.allow_from.iter().any(|n| n.contains(from.ip())) {
            tracing::warn!(%from, "an INVITE in Meta's name from outside meta.sip.allow_from");
            return refuse(403, "Forbidden - source address not accepted");
        }
        if origin.kind() != Kind::Tls {
            tracing::warn!(%from, "an INVITE in Meta's name not over TLS");
            return refuse(403, "Forbidden - Meta's SIP interface is TLS only");
        }
        let number = crate::sip::dialog::request_uri(&invite)
            .and_then(|uri| crate::sip::uri::SipUri::parse(&uri).ok())
            .and_then(|u| u.user)
            .map(|user| {
                // `+15551112222;tgrp=wacall;trunk-context=byoc.example.com`
                let digits = user.split(';').next().unwrap_or_default();
                crate::number::e164_or_raw(digits)
            })
            .filter(|n| meta.numbers.contains(n));
        let Some(number) = number else {
            tracing::info!(%from, "Meta called a number not in SIP mode here");
            return refuse(404, "Not Found - no such business number in SIP mode");
        };
        let call = crate::call::whatsapp::sip::MetaSipCall {
            server,
            invite,
            peer: from,
            business: number.clone(),
            contact: format!(
                "sip:{number}@{}:{};transport=tls",
                meta.config.hostname,
                origin.local_addr().port()
            ),
        };
        let call_id = call.call_id();
        self.inner
            .table
            .insert(call_id.clone(), Route::Pending(Vec::new()));
        let link = crate::call::whatsapp::sip::MetaSipLink {
            call,
            origin: origin.clone(),
            table: Arc::clone(&self.inner.table),
        };
        match meta.calls.try_send(link) {
            Ok(()) => None,
            Err(e) => {
                self.inner.table.remove(&call_id);
                let link = match e {
                    tokio::sync::mpsc::error::TrySendError::Full(l)
                    | tokio::sync::mpsc::error::TrySendError::Closed(l) => l,
                };
                tracing::warn!("the WhatsApp ingress is not keeping up; Meta's call refused");
                let tag = format!("{:x}", random_u64());
                Some(link.call.refusal(503, "Service Unavailable - busy", &tag))
            }
        }
    }

    /// How calls to customers of `number` reach Meta: an INVITE through Meta's SIP proxy
    /// for a number in SIP mode (over the TLS listener), else Graph `connect`.
    pub(crate) fn dialer(
        &self,
        number: &crate::config::BusinessNumber,
    ) -> crate::call::plan::Dialer {
        use crate::call::plan::Dialer;
        let meta = self.inner.meta_sip.get();
        let tls = self.inner.handles.get().and_then(|h| h.tls.clone());
        match (number.signaling, meta, tls) {
            (crate::config::Signaling::Sip, Some(meta), Some(origin)) => {
                let contact = format!(
                    "sip:{}@{}:{};transport=tls",
                    number.display_number,
                    meta.config.hostname,
                    origin.local_addr().port()
                );
                Dialer::Sip(Box::new(crate::call::whatsapp::sip::MetaSipDialer {
                    origin,
                    table: Arc::clone(&self.inner.table),
                    proxy: meta.config.proxy.clone(),
                    hostname: meta.config.hostname.clone(),
                    business: number.display_number.clone(),
                    password: number.sip_password.clone(),
                    sdes: number.srtp == crate::config::SrtpKeying::Sdes,
                    contact,
                }))
            }
            _ => Dialer::Graph,
        }
    }

    /// Gives the ingress the agents' registrar.
    pub(crate) fn set_agents(
        &self,
        agents: Arc<crate::sip::registrar::Agents>,
    ) -> Result<(), crate::once::SetTwice> {
        crate::once::set(&self.inner.agents, agents, "the agents' registrar")
    }

    /// The agents' registrar, when agents are enabled.
    pub(crate) fn agent_registrar(&self) -> Option<Arc<crate::sip::registrar::Agents>> {
        self.inner.agents.get().cloned()
    }

    /// Whether agent `user`'s phone uses a WebSocket (a browser: WebRTC media); `None`
    /// when it is not registered.
    pub(crate) fn agent_on_websocket(&self, user: &str) -> Option<bool> {
        let binding = self.inner.agents.get()?.lookup(user)?;
        Some(binding.via.is_websocket())
    }

    /// A bridge with `caller` (the WhatsApp leg, answered) as leg A calling the registered
    /// phones of `call.users` (each over the connection it registered on; several at once
    /// for ring-all, the first to answer taking the call). Browser phones are offered our
    /// WebRTC SDP; other phones get the plain SDP a trunk gets.
    pub(crate) fn agent_bridge(
        &self,
        call: AgentCall<'_>,
        caller: &WhatsAppCaller,
    ) -> Result<BridgeSetup, (u16, &'static str)> {
        let inner = &self.inner;
        let handles = self.ready_handles()?;
        let mut targets = Vec::new();
        let mut b_handles = Vec::new();
        for user in call.users {
            let Some(binding) = inner.agents.get().and_then(|a| a.lookup(user)) else {
                continue;
            };
            let Some(handle) = handles.for_kind(binding.via) else {
                continue;
            };
            targets.push(self.agent_target(&call, user, &binding, handle, caller));
            b_handles.push(Some(handle.clone()));
        }
        if targets.is_empty() {
            return Err((480, "the agent's phone is not registered"));
        }
        let mut cfg = inner.bridge.clone();
        cfg.ring_timeout = call.ring_timeout;
        cfg.parallel = targets.len() > 1;
        let codecs = ["opus", "pcmu", "pcma"].map(String::from);
        self.whatsapp_bridge_with(cfg, targets, b_handles, Vec::new(), caller, &codecs)
    }

    /// The bridge target of agent `user`'s phone at `binding`, reached through `handle`.
    fn agent_target(
        &self,
        call: &AgentCall<'_>,
        user: &str,
        binding: &crate::sip::registrar::Binding,
        handle: &SipHandle,
        caller: &WhatsAppCaller,
    ) -> Target {
        let mut headers = vec![
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
                HeaderName::Other(Bytes::from_static(b"X-WA-Queue")),
                call.queue.to_string(),
            ),
        ];
        if !call.ivr_path.is_empty() {
            headers.push((
                HeaderName::Other(Bytes::from_static(b"X-WA-IVR-Path")),
                call.ivr_path.to_string(),
            ));
        }
        // Over a connection (TCP, TLS, WebSocket) the INVITE goes back over the flow that
        // registered; over UDP, to the registered Contact when it names an address (there
        // is no connection to reuse), else to where the REGISTER came from.
        let addr = match binding.via {
            Kind::Udp => crate::sip::uri::SipUri::parse(&binding.contact)
                .ok()
                .and_then(|u| {
                    let ip: std::net::IpAddr = match u.host {
                        crate::sip::uri::Host::V4(a) => a.into(),
                        crate::sip::uri::Host::V6(a) => a.into(),
                        _ => return None,
                    };
                    Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
                })
                .unwrap_or(binding.source),
            _ => binding.source,
        };
        Target {
            trunk: format!("agent:{user}"),
            addr,
            hostport: addr.to_string(),
            user: Some(user.to_string()),
            contact: self.contact(handle),
            credentials: None,
            invite_timeout: call.ring_timeout,
            headers,
            uri: Some(binding.contact.clone()),
            // Browser phones are offered the WebRTC leg; the others the trunk's SDP.
            webrtc: binding
                .via
                .is_websocket()
                .then(|| call.webrtc.clone().map(Bytes::from))
                .flatten(),
        }
    }

    /// Gives the ingress the listeners' handles, once they are bound.
    pub(crate) fn set_handles(&self, handles: SipHandles) -> Result<(), crate::once::SetTwice> {
        crate::once::set(&self.inner.handles, handles, "the SIP listeners' handles")
    }

    /// The bridge of a PBX's or trunk's INVITE (`server`, from `from` through `origin`)
    /// toward `targets`; its refusal is the response the INVITE gets.
    pub(super) fn bridge_from(
        &self,
        server: ServerId,
        invite: &SipMessage,
        from: SocketAddr,
        origin: &SipHandle,
        targets: Vec<Target>,
    ) -> Result<Bridge, Box<SipMessage>> {
        Bridge::start(
            self.inner.bridge.clone(),
            random_u64(),
            server,
            invite.clone(),
            from,
            origin.is_reliable(),
            self.contact(origin),
            targets,
        )
        .map_err(|(refusal, tag)| Box::new(refusal.response(invite, &tag)))
    }

    pub(super) fn contact(&self, handle: &SipHandle) -> String {
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
            Kind::Ws => format!("sip:waswitch@{addr};transport=ws"),
            Kind::Wss => format!("sip:waswitch@{addr};transport=wss"),
        }
    }

    /// The bridge targets of configured trunks `indexes` reachable through a listener, with
    /// the handles reaching them and their configured indexes; `headers` gives each
    /// trunk's extra INVITE headers.
    pub(super) fn targets(
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
                uri: None,
                webrtc: None,
            });
            b_handles.push(Some(handle.clone()));
            kept.push(t);
        }
        (targets, b_handles, kept)
    }

    /// The SIP listeners, once bound.
    fn ready_handles(&self) -> Result<&SipHandles, (u16, &'static str)> {
        self.inner
            .handles
            .get()
            .ok_or((503, "SIP listeners not ready"))
    }

    /// A WhatsApp user's call delivered through the B2BUA to the trunks of route `route`:
    /// the WhatsApp side stands in for leg A (a caller whose INVITE carries the customer's
    /// identity, the business number as the dialled user, and `sdp`, the codecs the switch
    /// offers the trunk); leg B is an ordinary SIP call to the trunks in order.
    pub(crate) fn whatsapp_bridge(
        &self,
        route: &str,
        caller: &WhatsAppCaller,
    ) -> Result<BridgeSetup, (u16, &'static str)> {
        let inner = &self.inner;
        let handles = self.ready_handles()?;
        let indexes = inner
            .router
            .named(
                route,
                &Caller {
                    country: crate::number::country(&caller.wa_id).as_deref(),
                    seed: random_u64(),
                },
                |t| inner.trunk_usable(t, handles),
            )
            .map_err(|e| match e {
                NoRoute::AllTrunksUnavailable => (503, "no trunk available"),
                _ => (404, "no such route"),
            })?;
        self.bridge_from_whatsapp(handles, &indexes, caller, None)
    }

    /// A bridge with `caller` as leg A calling the user of `uri` (`sip:user@host`) at
    /// `trunk` (the IVR's `dial` to a SIP URI on a trunk).
    pub(crate) fn whatsapp_bridge_to_trunk(
        &self,
        trunk: &str,
        uri: &str,
        caller: &WhatsAppCaller,
    ) -> Result<BridgeSetup, (u16, &'static str)> {
        let inner = &self.inner;
        let handles = self.ready_handles()?;
        let index = inner
            .router
            .trunks()
            .iter()
            .position(|t| t.name == trunk)
            .ok_or((404, "no such trunk"))?;
        if !inner.trunk_usable(index, handles) {
            return Err((503, "no trunk available"));
        }
        let user = uri
            .trim_start_matches("sips:")
            .trim_start_matches("sip:")
            .split('@')
            .next()
            .filter(|u| !u.is_empty() && !u.contains(':'));
        self.bridge_from_whatsapp(handles, &[index], caller, user)
    }

    /// A bridge with `caller` as leg A and trunks `indexes` (configured order) as leg B;
    /// `user` is called at each trunk instead of its own user or the business number.
    pub(super) fn bridge_from_whatsapp(
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
        let codecs = trunks[indexes[0]].codecs.clone();
        self.whatsapp_bridge_with(
            inner.bridge.clone(),
            targets,
            b_handles,
            indexes,
            caller,
            &codecs,
        )
    }

    /// A bridge with `caller` as leg A (its INVITE offering `codecs`) and `targets` as
    /// leg B, reached through `b_handles`; `indexes` are the targets' configured trunks.
    fn whatsapp_bridge_with(
        &self,
        cfg: BridgeConfig,
        targets: Vec<Target>,
        b_handles: Vec<Option<SipHandle>>,
        indexes: Vec<usize>,
        caller: &WhatsAppCaller,
        codecs: &[String],
    ) -> Result<BridgeSetup, (u16, &'static str)> {
        let inner = &self.inner;
        let seed = random_u64();
        let invite = caller.invite(seed, codecs);
        let a_call_id = invite
            .header(&HeaderName::CallId)
            .map(|h| h.value.clone())
            .unwrap_or_default();
        let bridge = Bridge::start(
            cfg,
            seed,
            ServerId::detached(0),
            invite,
            SocketAddr::from(([127, 0, 0, 1], 9)),
            true,
            "sip:whatsapp@whatsapp.invalid".into(),
            targets,
        )
        .map_err(|_| (500, "the WhatsApp side could not start a bridge"))?;
        Ok(BridgeSetup {
            bridge: Box::new(bridge),
            a: None,
            placed: false,
            b: b_handles,
            trunk_index: indexes,
            a_call_id,
            table: Arc::clone(&inner.table),
            load: inner.load.clone(),
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
        if crate::call::whatsapp::sip::header_text(
            &invite,
            crate::call::whatsapp::sip::EXTERNAL_DOMAIN,
        )
        .is_some()
        {
            return self.meta_call(server, invite, from, origin);
        }
        // An agent's phone (over the flow it registered on) calls a WhatsApp customer:
        // a business-initiated call from the business number, with every check a PBX's
        // call gets.
        if let Some(user) = inner
            .agents
            .get()
            .and_then(|a| a.agent_at(from, origin.kind()))
        {
            // The agent's own business number, else the first.
            let number = inner.bic.get().and_then(|b| {
                inner
                    .agent_numbers
                    .get(&user)
                    .and_then(|n| b.number(n))
                    .or_else(|| b.numbers.first())
                    .cloned()
            });
            let Some(number) = number else {
                return refuse(
                    403,
                    "Forbidden - no WhatsApp business number to call from",
                    None,
                );
            };
            tracing::info!(agent = %user, %from, "an agent's phone calls a customer");
            return self.business_call(
                server,
                invite,
                from,
                origin,
                format!("agent:{user}"),
                number,
            );
        }
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
        let selected = inner.router.select(
            &user,
            ingress,
            &Caller {
                country: None,
                seed: random_u64(),
            },
            |t| inner.trunk_usable(t, handles),
        );
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
        let bridge = match self.bridge_from(server, &invite, from, origin, targets) {
            Ok(b) => b,
            Err(response) => {
                return Some(SipCommand::Respond {
                    server,
                    response: *response,
                })
            }
        };
        inner
            .table
            .insert(a_call_id.clone(), Route::Pending(Vec::new()));
        let setup = BridgeSetup {
            bridge: Box::new(bridge),
            a: Some(origin.clone()),
            placed: false,
            b: b_handles,
            trunk_index: indexes,
            a_call_id: a_call_id.clone(),
            table: Arc::clone(&inner.table),
            load: inner.load.clone(),
        };
        let mut offer = CallOffer::new(Direction::SipTransit);
        offer.sip_call_id = Some(String::from_utf8_lossy(&a_call_id).into_owned());
        offer.business_number = caller;
        let plan = CallPlan::SipToSip { sip: setup };
        let calls = inner.calls.clone();
        let table = Arc::clone(&inner.table);
        let origin = origin.clone();
        inner.admissions.spawn("SIP call admission", async move {
            let refused = match calls.start(offer, plan).await {
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
                Route::Meta(actor) => match actor.send_message(LegMsg::MetaSip(event)) {
                    Ok(()) => return None,
                    Err(ractor::MessagingErr::SendErr(LegMsg::MetaSip(event))) => event,
                    Err(_) => return None,
                },
            },
            None => event,
        };
        // Nobody owns this Call-ID (any more).
        self.inner.table.remove_if(&call_id, |_, r| {
            matches!(r, Route::Call(_) | Route::Meta(_))
        });
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
                stray_invite_2xx(&response, origin, &self.inner.admissions);
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
fn stray_invite_2xx(response: &SipMessage, origin: &SipHandle, tasks: &Background) -> Option<()> {
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
    tasks.spawn("stray 2xx hang-up", async move {
        origin.send(SipCommand::Ack { request: ack, to }).await;
        origin.send(SipCommand::Request { request: bye, to }).await;
    });
    Some(())
}
