//! The registrar of agents' phones (browser phones over WebSocket, softphones), sans-IO.
//!
//! A REGISTER is answered here: challenged with digest (SHA-256 offered first, then MD5,
//! RFC 8760), checked against the agent's password, and its binding kept, refreshed or
//! removed. A binding lives on the connection it came over (the binding is the flow): a
//! request toward the agent goes back over that connection, and the connection closing
//! removes the binding. Repeated failures from one address are throttled. Time is an input
//! (Unix seconds); nothing here reads a clock or touches a socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use super::auth::{self, Algorithm, AuthError, NonceIssuer};
use super::build::MessageBuilder;
use super::header::NameAddr;
use super::msg::{HeaderName, Method, SipMessage};
use super::transport::Kind;
use super::uri::SipUri;

/// A connection (flow) a binding lives on, as its transport numbers it.
pub(crate) type FlowId = u64;

/// Shortest registration accepted (RFC 3261 §10.3: 423 with Min-Expires below it).
pub(crate) const MIN_EXPIRES: u64 = 60;
/// Longest registration granted (longer requests are cut to it).
pub(crate) const MAX_EXPIRES: u64 = 3600;
/// Granted when the REGISTER names no expiry.
pub(crate) const DEFAULT_EXPIRES: u64 = 600;
/// Failed authentications from one address within [`FAILURE_WINDOW`] before it is
/// throttled for the rest of the window.
pub(crate) const MAX_FAILURES: u32 = 10;
/// Most source addresses whose failed sign-ins are remembered at once.
const MAX_FAILING_ADDRESSES: usize = 65_536;

/// The window failures are counted in, seconds.
pub(crate) const FAILURE_WINDOW: u64 = 60;

/// Where an agent's phone is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Binding {
    /// The agent.
    pub user: String,
    /// The Contact URI the phone registered.
    pub contact: String,
    /// The connection it registered over (requests to the agent go back over it).
    pub flow: FlowId,
    /// Where the connection comes from.
    pub source: SocketAddr,
    /// The transport it came over (requests to the agent go out on that listener).
    pub via: Kind,
    /// When it lapses (Unix seconds).
    pub expires_at: u64,
}

/// What a REGISTER did, besides its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Registered {
    /// Nothing changed (challenged, refused, or a query).
    Nothing,
    /// The agent is reachable (new binding, or refreshed).
    Bound(String),
    /// The agent unregistered.
    Unbound(String),
}

/// Why a REGISTER was refused, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No or bad credentials (401 again, or 403).
    Credentials,
    /// Too many failures from this address.
    Throttled,
    /// The request itself is wrong (400, 423).
    Malformed,
}

impl Refusal {
    /// Metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Credentials => "credentials",
            Refusal::Throttled => "throttled",
            Refusal::Malformed => "malformed",
        }
    }
}

/// The outcome of one REGISTER.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The response to send back over the flow.
    pub response: SipMessage,
    /// What changed.
    pub registered: Registered,
    /// Why it was refused, when it was.
    pub refusal: Option<Refusal>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    since: u64,
    count: u32,
}

/// The agents' bindings.
#[derive(Debug)]
pub(crate) struct Registrar {
    nonces: NonceIssuer,
    bindings: HashMap<String, Binding>,
    /// The users bound on each flow (requests over a flow are its agent's; a closed flow
    /// takes its bindings along).
    by_flow: HashMap<FlowId, Vec<String>>,
    failures: HashMap<IpAddr, Failures>,
    /// The second of the last sweep (the bindings are scanned at most once a second).
    swept_at: Option<u64>,
    /// The second of the last sweep of `failures` made by a failure.
    failures_swept_at: Option<u64>,
}

impl Registrar {
    /// A registrar challenging with nonces from `nonces` (its realm is the agents').
    pub(crate) fn new(nonces: NonceIssuer) -> Registrar {
        Registrar {
            nonces,
            bindings: HashMap::new(),
            by_flow: HashMap::new(),
            failures: HashMap::new(),
            swept_at: None,
            failures_swept_at: None,
        }
    }

    /// Where `user` is reached, if registered and not lapsed at `now`.
    pub(crate) fn lookup(&self, user: &str, now: u64) -> Option<&Binding> {
        self.bindings.get(user).filter(|b| b.expires_at > now)
    }

    /// Removes `user`'s binding; whether there was one.
    pub(crate) fn unbind(&mut self, user: &str) -> bool {
        let Some(b) = self.bindings.remove(user) else {
            return false;
        };
        if let Some(users) = self.by_flow.get_mut(&b.flow) {
            users.retain(|u| u != user);
            if users.is_empty() {
                self.by_flow.remove(&b.flow);
            }
        }
        true
    }

    fn bind(&mut self, binding: Binding) {
        let (user, flow) = (binding.user.clone(), binding.flow);
        self.unbind(&user);
        self.by_flow.entry(flow).or_default().push(user.clone());
        self.bindings.insert(user, binding);
    }

    /// The agent registered over `flow` on transport `via` (not lapsed at `now`).
    pub(crate) fn agent_at(&self, flow: FlowId, via: Kind, now: u64) -> Option<String> {
        self.by_flow
            .get(&flow)?
            .iter()
            .filter_map(|u| self.bindings.get(u))
            .find(|b| b.via == via && b.expires_at > now)
            .map(|b| b.user.clone())
    }

    /// How many agents are registered.
    pub(crate) fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Answers `request` (a REGISTER) that came over `flow` from `source` at `now`; the
    /// agents' digest secrets come from `ha1_of`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn register(
        &mut self,
        request: &SipMessage,
        flow: FlowId,
        source: SocketAddr,
        via: Kind,
        now: u64,
        ha1_of: impl Fn(&str) -> Option<auth::Ha1>,
    ) -> Outcome {
        let refuse = |code: u16, reason: &str, refusal: Refusal| Outcome {
            response: MessageBuilder::response_to(request, code, reason, None).build(),
            registered: Registered::Nothing,
            refusal: Some(refusal),
        };
        if request.method() != Some(&Method::Register) {
            return refuse(405, "Method Not Allowed", Refusal::Malformed);
        }
        if self.throttled(source.ip(), now) {
            let response = MessageBuilder::response_to(request, 503, "Service Unavailable", None)
                .header(HeaderName::RetryAfter, FAILURE_WINDOW.to_string())
                .build();
            return Outcome {
                response,
                registered: Registered::Nothing,
                refusal: Some(Refusal::Throttled),
            };
        }
        // The address of record: To's user.
        let Some(aor) = request
            .header(&HeaderName::To)
            .and_then(|h| NameAddr::parse(&h.value).ok())
            .and_then(|a| SipUri::parse(&a.uri).ok())
            .and_then(|u| u.user)
        else {
            return refuse(400, "Bad To", Refusal::Malformed);
        };
        let Some(credentials) = request.header(&HeaderName::Authorization) else {
            return self.challenge(request, now, false);
        };
        let verified = auth::verify_ha1(
            &credentials.value,
            "REGISTER",
            &self.nonces,
            now,
            |u, _, a| ha1_of(u).map(|h| h.get(a).to_string()),
        );
        let user = match verified {
            Ok(user) => user,
            Err(AuthError::Stale) => return self.challenge(request, now, true),
            Err(e) => {
                self.failed(source.ip(), now);
                tracing::info!(%source, aor = %aor, error = %e, "agent registration refused");
                let mut out = refuse(403, "Forbidden", Refusal::Credentials);
                if matches!(e, AuthError::Nonce) {
                    // A nonce this node did not issue (another node's, a restart): a
                    // fresh challenge lets an honest phone try again.
                    out = self.challenge(request, now, true);
                    out.refusal = Some(Refusal::Credentials);
                }
                return out;
            }
        };
        if user != aor {
            self.failed(source.ip(), now);
            return refuse(403, "Forbidden", Refusal::Credentials);
        }
        self.failures.remove(&source.ip());
        let contacts: Vec<NameAddr> = request
            .headers_named(&HeaderName::Contact)
            .filter_map(|h| NameAddr::parse_all(&h.value).ok())
            .flatten()
            .collect();
        let header_expires = request
            .header(&HeaderName::Expires)
            .and_then(|h| std::str::from_utf8(&h.value).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // A query: the current binding, nothing changed.
        if contacts.is_empty() {
            let response = self.ok(request, &user, now);
            return Outcome {
                response,
                registered: Registered::Nothing,
                refusal: None,
            };
        }
        let Some(contact) = contacts.first() else {
            return refuse(400, "Bad Contact", Refusal::Malformed);
        };
        let expires = contact
            .param("expires")
            .flatten()
            .and_then(|v| v.parse::<u64>().ok())
            .or(header_expires)
            .unwrap_or(DEFAULT_EXPIRES);
        if contact.uri == "*" || expires == 0 {
            let had = self.unbind(&user);
            let response = MessageBuilder::response_to(request, 200, "OK", None).build();
            return Outcome {
                response,
                registered: if had {
                    Registered::Unbound(user)
                } else {
                    Registered::Nothing
                },
                refusal: None,
            };
        }
        if expires < MIN_EXPIRES {
            let response = MessageBuilder::response_to(request, 423, "Interval Too Brief", None)
                .header(
                    HeaderName::Other(bytes::Bytes::from_static(b"Min-Expires")),
                    MIN_EXPIRES.to_string(),
                )
                .build();
            return Outcome {
                response,
                registered: Registered::Nothing,
                refusal: Some(Refusal::Malformed),
            };
        }
        let expires = expires.min(MAX_EXPIRES);
        self.bind(Binding {
            user: user.clone(),
            contact: contact.uri.clone(),
            flow,
            source,
            via,
            expires_at: now + expires,
        });
        Outcome {
            response: self.ok(request, &user, now),
            registered: Registered::Bound(user),
            refusal: None,
        }
    }

    /// The connection `flow` closed: its bindings go (the agents are unreachable).
    pub(crate) fn flow_closed(&mut self, flow: FlowId) -> Vec<String> {
        let gone = self.by_flow.remove(&flow).unwrap_or_default();
        for user in &gone {
            self.bindings.remove(user);
        }
        gone
    }

    /// Removes the bindings lapsed at `now`, and forgets old failures; the agents whose
    /// bindings lapsed. Called on every REGISTER, it scans at most once a second (a lapsed
    /// binding is never found by a lookup meanwhile).
    pub(crate) fn expire(&mut self, now: u64) -> Vec<String> {
        if self.swept_at == Some(now) {
            return Vec::new();
        }
        self.swept_at = Some(now);
        let gone: Vec<String> = self
            .bindings
            .values()
            .filter(|b| b.expires_at <= now)
            .map(|b| b.user.clone())
            .collect();
        for user in &gone {
            self.unbind(user);
        }
        self.failures
            .retain(|_, f| now.saturating_sub(f.since) < FAILURE_WINDOW);
        gone
    }

    fn challenge(&self, request: &SipMessage, now: u64, stale: bool) -> Outcome {
        let response = MessageBuilder::response_to(request, 401, "Unauthorized", None)
            .header(
                HeaderName::WwwAuthenticate,
                self.nonces.challenge(now, Algorithm::Sha256, stale),
            )
            .header(
                HeaderName::WwwAuthenticate,
                self.nonces.challenge(now, Algorithm::Md5, stale),
            )
            .build();
        Outcome {
            response,
            registered: Registered::Nothing,
            refusal: None,
        }
    }

    /// 200 with the user's binding and its remaining time.
    fn ok(&self, request: &SipMessage, user: &str, now: u64) -> SipMessage {
        let mut b = MessageBuilder::response_to(request, 200, "OK", None);
        if let Some(binding) = self.lookup(user, now) {
            b = b.header(
                HeaderName::Contact,
                format!(
                    "<{}>;expires={}",
                    binding.contact,
                    binding.expires_at.saturating_sub(now)
                ),
            );
        }
        b.build()
    }

    fn throttled(&self, ip: IpAddr, now: u64) -> bool {
        self.failures.get(&ip).is_some_and(|f| {
            now.saturating_sub(f.since) < FAILURE_WINDOW && f.count >= MAX_FAILURES
        })
    }

    fn failed(&mut self, ip: IpAddr, now: u64) {
        // Sign-ins over the web fail here too, with no REGISTER to sweep the old ones: what
        // is past its window goes once the table is large, and it never holds more than
        // MAX_FAILING_ADDRESSES addresses (beyond that a new address is not throttled).
        if self.failures.len() >= MAX_FAILING_ADDRESSES / 16 && !self.failures.contains_key(&ip) {
            // At most one sweep a second, however many addresses fail.
            if self.failures_swept_at != Some(now) {
                self.failures_swept_at = Some(now);
                self.failures
                    .retain(|_, f| now.saturating_sub(f.since) < FAILURE_WINDOW);
            }
            if self.failures.len() >= MAX_FAILING_ADDRESSES {
                // Full of addresses failing now: the one failing longest makes room.
                let oldest = self
                    .failures
                    .iter()
                    .min_by_key(|(_, f)| f.since)
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    self.failures.remove(&oldest);
                }
            }
        }
        let f = self.failures.entry(ip).or_insert(Failures {
            since: now,
            count: 0,
        });
        if now.saturating_sub(f.since) >= FAILURE_WINDOW {
            *f = Failures {
                since: now,
                count: 0,
            };
        }
        f.count += 1;
    }
}

/// A sign-in with an agent's password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignIn {
    /// The password is the agent's.
    Ok,
    /// It is not (or there is no such agent).
    Refused,
    /// Too many failures from the address lately.
    Throttled,
}

/// Hears that an agent's phone registered (`true`) or went.
pub(crate) type Listener = std::sync::Arc<dyn Fn(&str, bool) + Send + Sync>;

/// The node's agents: their passwords and the registrar, shared by every SIP listener.
pub(crate) struct Agents {
    registrar: Mutex<Registrar>,
    /// Each agent's digest secrets (never the password itself).
    secrets: std::sync::RwLock<HashMap<String, auth::Ha1>>,
    realm: String,
    /// Told when an agent's phone registers (`true`) or goes.
    listener: Option<Listener>,
    /// An instant and the Unix second it was (the listeners count time in instants).
    anchor: (Instant, u64),
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

impl Agents {
    /// The agents of `passwords` (user → digest password), challenged in `realm` with
    /// nonces keyed by `secret`; `anchor` ties the listeners' instants to Unix seconds.
    pub(crate) fn new(
        passwords: HashMap<String, String>,
        realm: &str,
        secret: &str,
        anchor: (Instant, u64),
    ) -> Agents {
        let secrets = passwords
            .into_iter()
            .map(|(user, password)| {
                let ha1 = auth::Ha1::of(&user, realm, &password);
                (user, ha1)
            })
            .collect();
        Agents {
            registrar: Mutex::new(Registrar::new(NonceIssuer::new(realm, secret, 300))),
            secrets: std::sync::RwLock::new(secrets),
            realm: realm.to_string(),
            listener: None,
            anchor,
        }
    }

    /// Tells `listener` when an agent's phone registers or goes.
    pub(crate) fn with_listener(mut self, listener: Listener) -> Agents {
        self.listener = Some(listener);
        self
    }

    fn tell(&self, user: &str, registered: bool) {
        if let Some(l) = &self.listener {
            l(user, registered);
        }
    }

    fn unix(&self, now: Instant) -> u64 {
        self.anchor.1 + now.saturating_duration_since(self.anchor.0).as_secs()
    }

    /// Answers a REGISTER from `from` (over UDP the flow is the source address; a stream's
    /// connection is one flow). Counts it, and logs what changed.
    pub(crate) fn register(
        &self,
        request: &SipMessage,
        from: SocketAddr,
        via: Kind,
        now: Instant,
    ) -> SipMessage {
        let now = self.unix(now);
        let flow = flow_of(from);
        let mut registrar = self
            .registrar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for user in registrar.expire(now) {
            tracing::info!(agent = %user, "agent registration lapsed");
            self.tell(&user, false);
        }
        let out = registrar.register(request, flow, from, via, now, |u| {
            self.secrets
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(u)
                .cloned()
        });
        let outcome = match (&out.registered, out.refusal) {
            (Registered::Bound(user), _) => {
                tracing::info!(agent = %user, %from, "agent registered");
                self.tell(user, true);
                "bound"
            }
            (Registered::Unbound(user), _) => {
                tracing::info!(agent = %user, %from, "agent unregistered");
                self.tell(user, false);
                "unbound"
            }
            (Registered::Nothing, Some(r)) => r.as_str(),
            (Registered::Nothing, None) if out.response.status() == Some(401) => "challenged",
            (Registered::Nothing, None) => "queried",
        };
        metrics::counter!(crate::telemetry::AGENT_REGISTRATIONS_TOTAL, "outcome" => outcome)
            .increment(1);
        metrics::gauge!(crate::telemetry::AGENTS_REGISTERED).set(registrar.len() as f64);
        out.response
    }

    /// The realm agents' digest secrets are made in.
    pub(crate) fn realm(&self) -> &str {
        &self.realm
    }

    /// Adds agent `user` (or changes their secrets); their phone registers from now on.
    pub(crate) fn set_agent(&self, user: &str, ha1: auth::Ha1) {
        self.secrets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(user.to_string(), ha1);
    }

    /// Removes agent `user`: their phone's binding goes, and it registers no more.
    pub(crate) fn remove_agent(&self, user: &str) {
        self.secrets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(user);
        let gone = {
            let mut registrar = self
                .registrar
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let gone = registrar.unbind(user);
            metrics::gauge!(crate::telemetry::AGENTS_REGISTERED).set(registrar.len() as f64);
            gone
        };
        if gone {
            tracing::info!(agent = %user, "agent removed; unregistered");
            self.tell(user, false);
        }
    }

    /// Whether `password` is agent `user`'s, for a sign-in from `from` (outside SIP: the
    /// agent page). Failures count toward the same per-address throttle as REGISTERs.
    pub(crate) fn sign_in(&self, from: IpAddr, user: &str, password: &str) -> SignIn {
        let now = self.unix(Instant::now());
        let mut registrar = self
            .registrar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if registrar.throttled(from, now) {
            return SignIn::Throttled;
        }
        let ok = self
            .secrets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(user)
            .is_some_and(|h| h.matches(user, &self.realm, password));
        if ok {
            SignIn::Ok
        } else {
            registrar.failed(from, now);
            SignIn::Refused
        }
    }

    /// Where agent `user`'s phone is reached now, if it is registered.
    pub(crate) fn lookup(&self, user: &str) -> Option<Binding> {
        let now = self.unix(Instant::now());
        self.registrar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .lookup(user, now)
            .cloned()
    }

    /// The agent whose phone registered over the flow from `from` on transport `via`, if
    /// one did (its requests over that flow are the agent's).
    pub(crate) fn agent_at(&self, from: SocketAddr, via: Kind) -> Option<String> {
        let now = self.unix(Instant::now());
        self.registrar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .agent_at(flow_of(from), via, now)
    }

    /// The connection from `from` closed: the agents registered over it are gone.
    pub(crate) fn flow_closed(&self, from: SocketAddr) {
        let mut registrar = self
            .registrar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for user in registrar.flow_closed(flow_of(from)) {
            tracing::info!(agent = %user, %from, "agent's connection closed; unregistered");
            self.tell(&user, false);
        }
        metrics::gauge!(crate::telemetry::AGENTS_REGISTERED).set(registrar.len() as f64);
    }
}

/// The flow of a peer address (datagrams from one address are one flow).
fn flow_of(from: SocketAddr) -> FlowId {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    from.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests;
