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

use super::media::MediaMsg;
use super::supervisor::CallMsg;
#[cfg(test)]
use super::Fault;
use super::{CallOffer, CallRefused, Calls};
use crate::config::{Config, Transport as ConfigTransport};
use crate::media::shard::Side;
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
    a: SipHandle,
    b: Vec<Option<SipHandle>>,
    /// Configured trunk index of each target.
    trunk_index: Vec<usize>,
    a_call_id: Bytes,
    table: Arc<DashMap<Bytes, Route>>,
    load: TrunkLoad,
}

/// The [`BridgeSetup`] of a SIP call, taken once by its supervisor.
#[derive(Clone, Default)]
pub struct SipStart(Arc<Mutex<Option<BridgeSetup>>>);

impl SipStart {
    fn new(setup: BridgeSetup) -> Self {
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
            }),
        }
    }

    /// Whether SIP calls are routed at all (some route is configured).
    pub fn routes_calls(&self) -> bool {
        self.inner.router.has_routes()
    }

    /// Gives the ingress the listeners' handles, once they are bound.
    pub fn set_handles(&self, handles: SipHandles) {
        let _ = self.inner.handles.set(handles);
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
        let mut targets = Vec::with_capacity(indexes.len());
        let mut b_handles = Vec::with_capacity(indexes.len());
        for &t in &indexes {
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
                contact: self.contact(handle),
                credentials: trunk.credentials.as_ref().map(|(u, p)| Credentials {
                    username: u.clone(),
                    password: p.clone(),
                }),
                invite_timeout: trunk.invite_timeout,
            });
            b_handles.push(Some(handle.clone()));
        }
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
            a: origin.clone(),
            b: b_handles,
            trunk_index: indexes,
            a_call_id: a_call_id.clone(),
            table: Arc::clone(&inner.table),
            load: inner.load.clone(),
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
            // Responses, ACKs and CANCELs for a call that is gone need nothing more: its
            // final response already went out.
            _ => None,
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
    /// Makes the actor fail (supervision tests).
    #[cfg(test)]
    Fault(Fault),
}

/// State of a running bridge actor.
pub struct BridgeState {
    bridge: Bridge,
    a: SipHandle,
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
        for event in pending {
            let _ = myself.send_message(BridgeMsg::Sip(event));
        }
        let mut state = BridgeState {
            bridge: setup.bridge,
            a: setup.a,
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
        };
        // Anchor the media before the trunk sees the caller's SDP.
        let anchor = match &state.media {
            Some(media) => match media
                .call(MediaMsg::Anchor, Some(super::CALL_RPC_TIMEOUT))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(a)) => a.map(|a| Anchor {
                    ip: a.ip,
                    ports: a.ports,
                }),
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
                state.bridge.hangup(now, &cause);
                let span = state.span.clone();
                state.run(&myself).instrument(span).await;
                let _ = reply.send(());
                return Ok(());
            }
            #[cfg(test)]
            BridgeMsg::Fault(fault) => fault.trigger("sip_b2bua")?,
        }
        let span = state.span.clone();
        state.run(&myself).instrument(span).await;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for call_id in state.routed.drain(..) {
            state.table.remove(&call_id);
        }
        if let Some(t) = state.counted.take() {
            state.load.remove(t);
        }
        Ok(())
    }
}

impl BridgeState {
    /// Carries out what the bridge asks, then re-arms its timer.
    async fn run(&mut self, myself: &ActorRef<BridgeMsg>) {
        while let Some(action) = self.bridge.poll_action() {
            match action {
                Action::A(command) => {
                    self.a.send(command).await;
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
        let next = self.bridge.poll_timeout();
        if next.is_some() && next != self.timer_at {
            self.timer_at = next;
            if let Some(at) = next {
                let wait = at.saturating_duration_since(Instant::now());
                myself.send_after(wait, || BridgeMsg::Timer);
            }
        }
    }

    fn progress(&mut self, progress: Progress) {
        use super::leg::LegState;
        use super::LegRole;
        let report = |call: &ActorRef<CallMsg>, state: LegState| {
            let _ = call.send_message(CallMsg::LegChanged {
                role: LegRole::Business,
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
                let _ = self.call.send_message(CallMsg::Routed { trunk });
            }
            Progress::Ringing => report(&self.call, LegState::Ringing),
            Progress::Answered => report(&self.call, LegState::Answered),
            Progress::Ended { by, cause } => {
                let by = match by {
                    Some(Leg::A) => HangupParty::Caller,
                    Some(Leg::B) => HangupParty::Callee,
                    None => HangupParty::Switch,
                };
                let _ = self.call.send_message(CallMsg::BridgeEnded { by, cause });
            }
        }
    }
}
