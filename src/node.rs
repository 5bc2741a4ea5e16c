//! One running switch node: wires config, store, the call plane and the HTTP listener, and
//! owns the drain-then-stop lifecycle.
//!
//! Start order: metrics, store (migrated), root supervisor (CDR writer, process sampler), HTTP
//! listener. Stop order, on SIGTERM/SIGINT: `/ready` turns 503 and new calls are refused;
//! calls in progress get the configured grace period, then are hung up; every CDR is flushed
//! to the store (or, if the store is gone, spilled to a file so none is lost); the HTTP
//! listener and the actors stop.

pub(crate) mod root;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState, Readiness};
use crate::call::registry::CallRegistry;
use crate::call::sip::{SipHandles, SipIngress};
use crate::call::{now_ms, Calls};
use crate::config::Config;
use crate::media::plane::MediaPlane;
use crate::media::ports::PortAllocator;
use crate::sip::overload::RateLimiter;
use crate::sip::transport::tcp::TlsStreams;
use crate::sip::transport::{bind_sip, ListenerSettings, SipListener};
use crate::sip::trunk::{ProbeTarget, TrunkHealth};
use crate::store::writer::{CdrQueue, CdrWriterArgs, CdrWriterMsg};
use crate::store::{Store, StoreError};
use crate::telemetry;
use root::{RootArgs, RootMsg, RootSupervisor};

/// CDRs held in memory before calls ending have to wait for the store.
/// The digest realm agents' phones register in.
const AGENT_REALM: &str = "waswitch";
const CDR_QUEUE_CAPACITY: usize = 65_536;
/// Calls still up when the grace period ends get this long to hang up.
const HANGUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the final CDR flush may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the last actions for Meta may take to be sent at shutdown.
const OUTBOX_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node could not start. Each names the configuration key to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The store could not be opened or migrated (check `store.url`).
    #[error("store.url: {0}")]
    Store(#[from] StoreError),
    /// A listener could not bind (address in use, not local, no permission).
    #[error("{key}: cannot listen on {address}: {source}")]
    Bind {
        /// The configuration key.
        key: &'static str,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be used (check `sip.tls`).
    #[error("sip.tls: {0}")]
    Tls(#[from] crate::sip::transport::tls::TlsError),
    /// The trust of media streams' `wss://` connections could not be set up.
    #[error("stream.ca_file: {0}")]
    Stream(String),
    /// A part of the node was set up twice: a bug in the start order.
    #[error("start order: {0}")]
    Order(#[from] crate::once::SetTwice),
    /// An actor could not start.
    #[error("cannot start {what}: {reason}")]
    Actor {
        /// Which actor.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// What the drain achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// Calls that were still up when the grace period ended and were hung up.
    pub hung_up: usize,
    /// CDRs written by the final flush.
    pub cdrs_flushed: u64,
    /// CDRs that could not be written to the store, and the file they were saved to.
    pub cdrs_spilled: Option<(usize, PathBuf)>,
}

impl StopReport {
    /// Every CDR reached the store.
    pub fn clean(&self) -> bool {
        self.cdrs_spilled.is_none()
    }
}

/// Calling events from Meta's webhooks waiting for the call layer.
const META_EVENT_QUEUE: usize = 4096;
/// CDRs on their way to their app and the permission service.
const CDR_TAP_CAPACITY: usize = 65_536;
/// Longest the permission records still being written may take at shutdown.
const PERMISSION_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often lapsed temporary grants are recorded as expired.
const PERMISSION_SWEEP: Duration = Duration::from_secs(60);

/// Cancels business-initiated calls still waiting for their customer when the customer's
/// permission ends (do-not-call, revocation, withdrawal, expiry): the PBX gets the refusal
/// it would get dialling now, and Meta a `terminate`. Answered calls go on.
/// The agents the REST API stored join those of the configuration (which win a clash of
/// names); queues that no longer exist are dropped from their lists.
async fn load_stored_agents(
    store: &Store,
    registrar: &crate::sip::registrar::Agents,
    directory: &crate::call::agents::Directory,
) -> Result<(), StartError> {
    let stored = store.agents().await.map_err(|e| StartError::Actor {
        what: "stored agents",
        reason: e.to_string(),
    })?;
    let queues = directory.queue_names();
    for agent in stored {
        if directory.is_configured(&agent.user) {
            tracing::warn!(agent = %agent.user, "a stored agent has the name of a configured one; the configuration's is used");
            continue;
        }
        registrar.set_agent(
            &agent.user,
            crate::sip::auth::Ha1 {
                md5: agent.ha1_md5,
                sha256: agent.ha1_sha256,
            },
        );
        let kept: Vec<String> = agent
            .queues
            .into_iter()
            .filter(|q| queues.contains(q))
            .collect();
        directory.upsert(&agent.user, agent.display_name, kept);
    }
    Ok(())
}

fn spawn_cutoffs(
    mut cutoffs: tokio::sync::broadcast::Receiver<(
        crate::permission::service::Pair,
        crate::permission::Blocked,
    )>,
    calls: Calls,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (pair, blocked) = match cutoffs.recv().await {
                Ok(c) => c,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::error!(
                        missed = n,
                        "permission cut-offs missed; waiting calls may ring on"
                    );
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            // In order: the first reason to reach a call is the one its PBX hears.
            let waiting = calls.waiting_business_calls(&pair.business_number, &pair.wa_id);
            let hangups = waiting.iter().map(|id| {
                tracing::info!(call_id = %id, reason = blocked.as_str(), "customer's permission ended; cancelling the call");
                metrics::counter!(telemetry::CALLS_BLOCKED_TOTAL, "reason" => blocked.as_str())
                    .increment(1);
                calls.hangup(id, crate::store::HangupParty::Switch, blocked.as_str())
            });
            futures::future::join_all(hangups).await;
        }
    })
}

/// A running node.
pub struct Node {
    config: Config,
    store: Store,
    calls: Calls,
    readiness: Arc<Readiness>,
    root: ActorRef<RootMsg>,
    root_task: JoinHandle<()>,
    http_addr: SocketAddr,
    http_stop: oneshot::Sender<()>,
    http_task: JoinHandle<()>,
    sip_udp: Option<SipListener>,
    sip_tcp: Option<SipListener>,
    sip_tls: Option<SipListener>,
    /// SIP over WebSocket on the HTTP listener (when agents are configured).
    sip_ws: Option<SipListener>,
    media: MediaPlane,
    trunk_health: TrunkHealth,
    permissions: crate::permission::service::Permissions,
    sweeper: JoinHandle<()>,
    /// Catches up on other nodes' permission records (a cluster on PostgreSQL).
    cluster_listener: Option<JoinHandle<()>>,
    /// This node in its cluster, and the task writing its heartbeat and calls.
    cluster: Option<(Arc<crate::call::cluster::Cluster>, JoinHandle<()>)>,
    /// SIP admissions in progress (each answers its INVITE).
    admissions: crate::tasks::Background,
    /// Sends the actions Meta must get (WhatsApp calling configured).
    outbox: Option<crate::meta::outbox::OutboxWorker>,
    /// Sends the CDRs from the store's outbox to the CDR webhook.
    cdr_webhook: Option<crate::store::webhook::CdrWebhook>,
    /// The permission cut-off listener and the webhook event loop.
    background: Vec<JoinHandle<()>>,
}

impl Node {
    /// Starts every part of the node; returns once the HTTP listener is bound.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let prometheus = telemetry::install_metrics();
        let udp = config
            .sip
            .transports
            .contains(&crate::config::Transport::Udp);
        let tcp = config
            .sip
            .transports
            .contains(&crate::config::Transport::Tcp);
        let mut expected = vec!["http"];
        if udp {
            expected.push("sip_udp");
        }
        if tcp {
            expected.push("sip_tcp");
        }
        if config.sip.tls.is_some() {
            expected.push("sip_tls");
        }
        let readiness = Arc::new(Readiness::new(&expected));

        let store = Store::open(&config.store).await?;
        tracing::info!(store = %config.store.url, backend = store.backend(), "store open");

        let permissions = crate::permission::service::Permissions::load(
            store.clone(),
            crate::permission::rules(&config.permissions),
            &config.node_id,
        )
        .await?;
        let sweeper = permissions.spawn_sweeper(PERMISSION_SWEEP);
        // In a cluster, what other nodes record reaches this node's permission states.
        let cluster_listener = permissions.spawn_cluster_listener();
        let registry = CallRegistry::new();
        // The CDR webhook sends from the store's outbox: on SQLite every row is this node's;
        // on PostgreSQL, the rows naming this node (and those it adopts in a cluster).
        let webhook = match config.cdr_webhook.clone() {
            Some(hook) => Some(
                crate::store::webhook::start(
                    hook,
                    store.clone(),
                    &config.node_id,
                    matches!(store, Store::Sqlite(_)),
                )
                .map_err(|reason| StartError::Actor {
                    what: "CDR webhook",
                    reason,
                })?,
            ),
            None => None,
        };
        // A node on PostgreSQL is one of a cluster: it registers the calls it has, and
        // forwards webhooks for other nodes' calls to them.
        let cluster = match (&store, config.meta.as_ref()) {
            (Store::Postgres(_), Some(meta)) => Some(crate::call::cluster::Cluster::start(
                store.clone(),
                permissions.clone(),
                &config.node_id,
                registry.clone(),
                meta.app_secret.expose().as_bytes(),
                webhook.clone(),
            )),
            _ => None,
        };
        let cdrs = CdrQueue::new(CDR_QUEUE_CAPACITY);
        let apps = crate::call::app::Apps::start(
            &config.apps,
            crate::call::app::AppNames {
                routes: config.routes.iter().map(|r| r.name.clone()).collect(),
                trunks: config.trunks.iter().map(|t| t.name.clone()).collect(),
                queues: config.queues.iter().map(|q| q.name.clone()).collect(),
                app_routes: config
                    .app_routes
                    .iter()
                    .map(|(r, a)| (r.clone(), a.clone()))
                    .collect(),
            },
        )
        .map_err(|reason| StartError::Actor {
            what: "HTTP apps",
            reason,
        })?;
        for app in &config.apps {
            std::fs::create_dir_all(&app.recording_dir).map_err(|e| StartError::Actor {
                what: "app recording directory",
                reason: format!(
                    "app {:?}: recording_dir {}: {e}",
                    app.name,
                    app.recording_dir.display()
                ),
            })?;
        }
        let tap = cdr_fan_out(permissions.clone(), apps.clone());
        if let Some((cluster, _)) = &cluster {
            cluster.set_tap(tap.clone());
        }
        cdrs.set_tap(tap)?;
        // Call-control and recording events (a voicemail, a recording ready) go to the same
        // webhook, signed alike.
        let control_events = match &config.cdr_webhook {
            Some(hook) => Some(
                crate::store::webhook::start_events(hook.clone(), telemetry::CDR_WEBHOOKS_TOTAL)
                    .map_err(|reason| StartError::Actor {
                        what: "event webhook",
                        reason,
                    })?,
            ),
            None => None,
        };
        let recordings = crate::call::recordings::Recordings::new(
            config.recording.clone(),
            &config.node_id,
            Some(store.clone()),
            control_events.clone(),
        )
        .map_err(|reason| StartError::Actor {
            what: "recordings",
            reason,
        })?;
        for ivr in &config.ivrs {
            std::fs::create_dir_all(&ivr.voicemail_dir).map_err(|e| StartError::Actor {
                what: "IVR voicemail directory",
                reason: format!(
                    "ivr {:?}: voicemail_dir {}: {e}",
                    ivr.name,
                    ivr.voicemail_dir.display()
                ),
            })?;
        }
        let node_id: Arc<str> = Arc::from(config.node_id.as_str());
        let root_args = RootArgs {
            registry: registry.clone(),
            cdrs: cdrs.clone(),
            writer: CdrWriterArgs {
                store: store.clone(),
                queue: cdrs.clone(),
                batch_size: config.store.cdr_batch_size,
                flush_interval: config.store.cdr_flush_interval,
                reject_dir: PathBuf::from("."),
                webhook: webhook.clone(),
            },
            node_id: Arc::clone(&node_id),
        };
        let (root, root_task) = Actor::spawn(None, RootSupervisor, root_args)
            .await
            .map_err(|e| StartError::Actor {
                what: "root supervisor",
                reason: e.to_string(),
            })?;
        let ports = PortAllocator::new(config.media.port_min, config.media.port_max);
        let media = MediaPlane::start(
            config.media.ip,
            ports.clone(),
            config.media.shards,
            config.media.source_policy,
            config.media.timeout,
        )
        .map_err(|e| StartError::Actor {
            what: "media shards",
            reason: e.to_string(),
        })?;
        media.set_opus_complexity(config.media.opus_complexity);
        tracing::info!(shards = config.media.shards, ip = %config.media.ip, "media plane running");
        let calls = Calls::new(
            registry,
            root.get_cell(),
            cdrs,
            ports,
            &node_id,
            config.limits.max_calls,
        );
        calls.set_media(media.clone())?;
        calls.set_recordings(recordings.clone())?;
        if let Some((cluster, _)) = &cluster {
            cluster.set_calls(calls.clone());
        }

        let trunk_health = TrunkHealth::default();
        // A trunk counts as up until its probes say otherwise.
        for trunk in &config.trunks {
            metrics::gauge!(telemetry::TRUNK_UP, "trunk" => trunk.name.clone()).set(1.0);
        }
        let probes = probe_targets(&config);
        let graph = match config.meta.as_ref() {
            Some(meta) => Some(Arc::new(
                crate::meta::graph::GraphClient::new(meta).map_err(|e| StartError::Actor {
                    what: "Graph API client",
                    reason: e.to_string(),
                })?,
            )),
            None => None,
        };
        let (outbox, outbox_worker) = match &graph {
            Some(graph) => {
                let (outbox, worker) = crate::meta::outbox::Outbox::start(Arc::clone(graph));
                (Some(outbox), Some(worker))
            }
            None => (None, None),
        };
        let ingress = SipIngress::new(&config, calls.clone(), trunk_health.clone());
        let admissions = ingress.admissions().clone();
        if let Some(outbox) = &outbox {
            if !config.business_numbers.is_empty() {
                ingress.set_bic(crate::call::whatsapp::permit::BicContext {
                    outbox: outbox.clone(),
                    permissions: permissions.clone(),
                    numbers: Arc::new(config.business_numbers.clone()),
                    excluded_countries: Arc::new(config.permissions.excluded_countries.clone()),
                    sanctioned: Arc::new(config.permissions.sanctioned_calling_codes.clone()),
                    authoritative: config.permissions.authoritative_check,
                })?;
            }
        }
        // Meta's INVITEs for numbers in SIP mode, from the SIP ingress to the WhatsApp one.
        let (meta_sip_tx, meta_sip_rx) = tokio::sync::mpsc::channel(META_EVENT_QUEUE);
        if let Some(sip) = config.meta.as_ref().and_then(|m| m.sip.clone()) {
            let numbers: Vec<String> = config
                .business_numbers
                .iter()
                .filter(|b| b.signaling == crate::config::Signaling::Sip)
                .map(|b| b.display_number.clone())
                .collect();
            for b in config.business_numbers.iter().filter(|b| {
                b.signaling == crate::config::Signaling::Sip && b.sip_password.expose().is_empty()
            }) {
                tracing::warn!(
                    number = %b.display_number,
                    "a number in SIP mode without its SIP password: Meta will refuse its calls to customers; fetch it with `waswitch meta settings get --number {} --save-sip-password <sip_password_file>`",
                    b.phone_number_id
                );
            }
            if !numbers.is_empty() {
                ingress.set_meta_sip(crate::call::sip::ingress::MetaSipIngress {
                    config: sip,
                    numbers,
                    calls: meta_sip_tx,
                })?;
            }
        }
        let mut background = vec![
            spawn_cutoffs(permissions.cutoffs(), calls.clone()),
            tokio::spawn(recordings.clone().run_sweeper()),
        ];
        let agent_directory = crate::call::agents::Directory::new(&config.agents, &config.queues);
        agent_directory.export_metrics();
        if !config.queues.is_empty() {
            // Wrap-ups end with time alone: waiting calls are offered agents as they do.
            let directory = agent_directory.clone();
            background.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    directory.tick();
                }
            }));
        }
        // Without routes or WhatsApp numbers the switch takes no SIP calls and answers
        // INVITEs itself (404).
        let user: Option<Arc<dyn crate::sip::transport::SipUser>> = ingress
            .takes_calls()
            .then(|| Arc::new(ingress.clone()) as Arc<dyn crate::sip::transport::SipUser>);
        // Agents' phones register on every listener; nonces are keyed per node. The
        // directory hears who is registered; queue calls find the phones through it.
        // Agents are on when the configuration names agents or queues (the API adds agents
        // to queues; those it stored are loaded below).
        let agents_on = !config.agents.is_empty() || !config.queues.is_empty();
        let agent_registrar = agents_on.then(|| {
            let directory = agent_directory.clone();
            Arc::new(
                crate::sip::registrar::Agents::new(
                    config
                        .agents
                        .iter()
                        .map(|a| (a.user.clone(), a.password.expose().to_string()))
                        .collect(),
                    AGENT_REALM,
                    &uuid::Uuid::new_v4().to_string(),
                    (
                        std::time::Instant::now(),
                        u64::try_from(now_ms() / 1000).unwrap_or(0),
                    ),
                )
                .with_listener(Arc::new(move |user: &str, registered: bool| {
                    directory.set_registered(user, registered)
                })),
            )
        });
        if let Some(registrar) = &agent_registrar {
            ingress.set_agents(Arc::clone(registrar))?;
            load_stored_agents(&store, registrar, &agent_directory).await?;
        }
        let settings = ListenerSettings {
            timers: config.sip.timers,
            admission: Arc::new(std::sync::Mutex::new(RateLimiter::new(
                config.limits.max_cps,
            ))),
            probes,
            health: trunk_health.clone(),
            // Calls are taken only from the trunks' networks (and Meta's, for numbers in
            // SIP mode); others are refused before any transaction (a node that takes no
            // calls answers INVITEs itself).
            sources: user.is_some().then(|| {
                let meta = config
                    .meta
                    .as_ref()
                    .and_then(|m| m.sip.as_ref())
                    .filter(|_| {
                        config
                            .business_numbers
                            .iter()
                            .any(|b| b.signaling == crate::config::Signaling::Sip)
                    })
                    .map(|s| s.allow_from.clone())
                    .unwrap_or_default();
                Arc::new(crate::sip::source::Sources::new(
                    config
                        .trunks
                        .iter()
                        .flat_map(|t| t.accept_from.iter().copied())
                        .chain(meta)
                        .collect(),
                    config.sip.unknown_sources,
                ))
            }),
            user,
            agents: agent_registrar.clone(),
        };
        let sip_tls = match &config.sip.tls {
            Some(tls) => {
                let streams = TlsStreams {
                    acceptor: crate::sip::transport::tls::acceptor(&tls.cert, &tls.key)?,
                    connector: tls
                        .ca
                        .as_deref()
                        .map(crate::sip::transport::tls::connector)
                        .transpose()?,
                };
                let listener =
                    tokio::net::TcpListener::bind(tls.listen)
                        .await
                        .map_err(|source| StartError::Bind {
                            key: "sip.tls.listen",
                            address: tls.listen,
                            source,
                        })?;
                let l = crate::sip::transport::tcp::serve_tls(listener, settings.clone(), streams)
                    .map_err(|source| StartError::Bind {
                        key: "sip.tls.listen",
                        address: tls.listen,
                        source,
                    })?;
                readiness.bound("sip_tls", l.local_addr());
                tracing::info!(sip_tls = %l.local_addr(), "SIP listening");
                Some(l)
            }
            None => None,
        };
        // SIP over WebSocket (agents' browser phones) shares the listeners' settings.
        let ws_settings = agents_on.then(|| settings.clone());
        let (sip_udp, sip_tcp) = bind_sip(config.sip.listen, udp, tcp, settings)
            .await
            .map_err(|source| StartError::Bind {
                key: "sip.listen",
                address: config.sip.listen,
                source,
            })?;
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| StartError::Bind {
                key: "http.listen",
                address: config.http.listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
            key: "http.listen",
            address: config.http.listen,
            source,
        })?;
        // SIP over WebSocket at /sip on the HTTP listener, for agents' phones.
        let sip_ws = ws_settings.map(|settings| {
            crate::sip::transport::ws::serve(http_addr, settings, config.http.tls.is_some())
        });
        ingress.set_handles(SipHandles {
            udp: sip_udp.as_ref().map(SipListener::handle),
            tcp: sip_tcp.as_ref().map(SipListener::handle),
            tls: sip_tls.as_ref().map(SipListener::handle),
            ws: sip_ws.as_ref().map(|(l, _)| l.handle()),
        })?;
        if let Some(l) = &sip_udp {
            readiness.bound("sip_udp", l.local_addr());
            tracing::info!(sip_udp = %l.local_addr(), "SIP listening");
        }
        if let Some(l) = &sip_tcp {
            readiness.bound("sip_tcp", l.local_addr());
            tracing::info!(sip_tcp = %l.local_addr(), "SIP listening");
        }

        // What call control (IVRs, apps) reaches: trunks, Meta, permissions, queues, apps,
        // voice bots.
        let streams = crate::call::stream::StreamServices::new(
            config.stream.ca_file.as_deref(),
            config.stream.connect_timeout,
        )
        .map_err(StartError::Stream)?;
        let control_services = outbox
            .as_ref()
            .map(|outbox| crate::call::ivr::ControlServices {
                sip: Some(ingress.clone()),
                outbox: outbox.clone(),
                permissions: Some(permissions.clone()),
                excluded_countries: Arc::new(config.permissions.excluded_countries.clone()),
                sanctioned: Arc::new(config.permissions.sanctioned_calling_codes.clone()),
                events: control_events.clone(),
                agents: (!config.queues.is_empty()).then(|| agent_directory.clone()),
                apps: apps.clone(),
                store: Some(store.clone()),
                streams: streams.clone(),
            });
        let meta_ingress = match (config.meta.as_ref(), &outbox, &control_services) {
            (Some(meta), Some(outbox), Some(services)) => {
                let control = crate::call::whatsapp::ingress::Control {
                    ivrs: config
                        .ivrs
                        .iter()
                        .map(|i| (i.name.clone(), i.clone()))
                        .collect(),
                    schedules: config.schedules.clone(),
                    services: services.clone(),
                    clock_offset_ms: config.clock_offset_ms,
                };
                let whatsapp = crate::call::whatsapp::WhatsAppCalls::new(
                    calls.clone(),
                    outbox.clone(),
                    &config.business_numbers,
                    Some(ingress.clone()),
                )
                .with_sanctioned(config.permissions.sanctioned_calling_codes.clone())
                .with_control(control);
                let whatsapp = match &graph {
                    Some(graph) => whatsapp.with_recordings(recordings.clone(), Arc::clone(graph)),
                    None => whatsapp,
                };
                Some((meta, whatsapp))
            }
            _ => None,
        };
        let meta_ingress = meta_ingress.map(|(meta, whatsapp)| {
            let (tx, rx) = tokio::sync::mpsc::channel(META_EVENT_QUEUE);
            background.push(tokio::spawn(whatsapp.run(rx, meta_sip_rx)));
            let replies = crate::permission::service::ReplyRecorder::new(
                permissions.clone(),
                &config.business_numbers,
            );
            Arc::new(
                crate::meta::ingress::Ingress::new(
                    meta.app_secret.clone(),
                    meta.verify_token.clone(),
                    tx,
                )
                .with_reply_sink(Arc::new(replies))
                .with_limits(config.http.webhooks),
            )
        });
        let meta_ingress = match (meta_ingress, &cluster) {
            (Some(ingress), Some((cluster, _))) => Some(Arc::new(
                Arc::try_unwrap(ingress)
                    .map_err(|_| StartError::Actor {
                        what: "webhook ingress",
                        reason: "shared before it was set up".into(),
                    })?
                    .with_owners(Arc::clone(cluster) as Arc<dyn crate::meta::ingress::CallOwners>),
            )),
            (ingress, _) => ingress,
        };
        let permission_api = api::permissions::PermissionApi {
            permissions: permissions.clone(),
            graph: graph.clone(),
            numbers: Arc::new(config.business_numbers.clone()),
            excluded_countries: Arc::new(config.permissions.excluded_countries.clone()),
            sanctioned: Arc::new(config.permissions.sanctioned_calling_codes.clone()),
        };
        let api_state = ApiState {
            readiness: Arc::clone(&readiness),
            store: store.clone(),
            calls: calls.clone(),
            prometheus,
            sip: ingress.clone(),
            agents: agent_directory,
            control: control_services,
            recordings: recordings.clone(),
        };
        let mut router = api::router(api_state.clone()).merge(api::webhooks::router(meta_ingress));
        if let Some((listener, acceptor)) = &sip_ws {
            router = router.merge(api::sip_ws::router(acceptor.clone()));
            let scheme = if config.http.tls.is_some() {
                "wss"
            } else {
                "ws"
            };
            tracing::info!(sip_ws = %format!("{scheme}://{}/sip", listener.local_addr()), "SIP listening");
            // The agent page and its API (agents sign in with their SIP credentials).
            router = router.merge(api::agent_page::router(api::agent_page::AgentPage {
                dir: config.http.agent_page.clone(),
                agents: api_state.agents.clone(),
                registrar: agent_registrar.clone(),
                permissions: (!config.business_numbers.is_empty()).then(|| permission_api.clone()),
                agent_numbers: Arc::new(config.agent_business_numbers()),
            }));
        }
        let sip_ws = sip_ws.map(|(listener, _)| listener);
        // The REST API: the operator's token, and the apps' tokens limited to their
        // business numbers and scopes.
        if config.http.api_token.is_some() || !config.api_tokens.is_empty() {
            router = router.merge(api::v1::router(
                api_state,
                config.http.api_token.clone(),
                config.api_tokens.clone(),
                Some(permission_api),
                Some(api::numbers::NumbersApi {
                    graph: graph.clone(),
                    numbers: Arc::new(config.business_numbers.clone()),
                    schedules: Arc::new(config.schedules.clone()),
                }),
            ));
        }
        let (http_stop, stop_rx) = oneshot::channel::<()>();
        let limits = config.http.limits;
        let http_tls = match &config.http.tls {
            Some((cert, key)) => Some(crate::sip::transport::tls::acceptor(cert, key)?),
            None => None,
        };
        let http_task = tokio::spawn(async move {
            api::server::serve(listener, router, limits, http_tls, async {
                let _ = stop_rx.await;
            })
            .await;
        });
        readiness.bound("http", http_addr);
        if let Some((cluster, _)) = &cluster {
            // Other nodes reach this one where its media is advertised when the listener
            // takes any address.
            let ip = if http_addr.ip().is_unspecified() {
                config.media.ip
            } else {
                http_addr.ip()
            };
            let scheme = if config.http.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let url = format!("{scheme}://{}", SocketAddr::new(ip, http_addr.port()));
            tracing::info!(%url, "in a cluster: other nodes forward webhooks here");
            cluster
                .set_url(url)
                .await
                .map_err(|reason| StartError::Actor {
                    what: "the cluster node",
                    reason,
                })?;
        }
        tracing::info!(http = %http_addr, node = %node_id, version = telemetry::VERSION, "waswitch ready");

        Ok(Node {
            config,
            store,
            calls,
            readiness,
            root,
            root_task,
            http_addr,
            http_stop,
            http_task,
            sip_udp,
            sip_tcp,
            sip_tls,
            sip_ws,
            media,
            trunk_health,
            permissions,
            sweeper,
            cluster_listener,
            cluster,
            admissions,
            outbox: outbox_worker,
            cdr_webhook: webhook,
            background,
        })
    }

    /// The permission service.
    pub fn permissions(&self) -> &crate::permission::service::Permissions {
        &self.permissions
    }

    /// Health of the probed trunks.
    pub fn trunk_health(&self) -> &TrunkHealth {
        &self.trunk_health
    }

    /// The address the SIP TCP listener is bound to.
    pub fn sip_tcp_addr(&self) -> Option<SocketAddr> {
        self.sip_tcp.as_ref().map(SipListener::local_addr)
    }

    /// The address the SIP TLS listener is bound to.
    pub fn sip_tls_addr(&self) -> Option<SocketAddr> {
        self.sip_tls.as_ref().map(SipListener::local_addr)
    }

    /// The address the SIP UDP listener is bound to.
    pub fn sip_udp_addr(&self) -> Option<SocketAddr> {
        self.sip_udp.as_ref().map(SipListener::local_addr)
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The call plane.
    pub fn calls(&self) -> &Calls {
        &self.calls
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Drains and stops the node: refuse new calls, give calls in progress the grace period,
    /// hang up the rest, flush every CDR, stop listeners and actors.
    pub async fn drain_and_stop(self) -> StopReport {
        let grace = self.config.shutdown.grace;
        self.readiness.begin_drain();
        if let Some((cluster, _)) = &self.cluster {
            cluster.drain();
        }
        self.calls.begin_drain();
        if let Some(sip) = &self.sip_udp {
            sip.begin_drain();
        }
        if let Some(sip) = &self.sip_tcp {
            sip.begin_drain();
        }
        if let Some(sip) = &self.sip_tls {
            sip.begin_drain();
        }
        if let Some(sip) = &self.sip_ws {
            sip.begin_drain();
        }
        let active = self.calls.active();
        tracing::info!(
            calls = active,
            grace_secs = grace.as_secs(),
            "draining: new calls refused"
        );

        let mut hung_up = 0;
        if !self.calls.wait_idle(grace).await {
            hung_up = self.calls.active();
            tracing::warn!(
                calls = hung_up,
                "grace period over; hanging up remaining calls"
            );
            self.calls.hangup_all("shutdown").await;
            if !self.calls.wait_idle(HANGUP_TIMEOUT).await {
                tracing::error!(
                    calls = self.calls.active(),
                    "calls did not end after hangup"
                );
            }
        }

        self.sweeper.abort();
        if let Some(listener) = &self.cluster_listener {
            listener.abort();
        }
        // INVITEs being admitted as the drain began get their answer (a 503) before the
        // listeners stop.
        let _ = self.admissions.settle(HANGUP_TIMEOUT).await;
        // The ended calls' permission settlements, and any record whose client hung up.
        let unsettled = self
            .permissions
            .background()
            .settle(PERMISSION_SETTLE_TIMEOUT)
            .await;
        if unsettled > 0 {
            tracing::error!(
                unsettled,
                "permission records not written before shutdown; the next start settles them from the trail"
            );
        }

        let (cdrs_flushed, flush_error) = match flush_cdrs(&self.root).await {
            Ok(n) => (n, None),
            Err(e) => (0, Some(e)),
        };
        let mut cdrs_spilled = None;
        let queue = self.calls.cdr_queue().clone();
        if flush_error.is_some() || queue.outstanding() > 0 {
            let left = queue.take_all().await;
            if !left.is_empty() {
                let path = spill_path(&self.config.node_id);
                match crate::store::writer::write_jsonl(&path, &left) {
                    Ok(()) => {
                        tracing::error!(
                            cdrs = left.len(), path = %path.display(),
                            error = flush_error.as_deref().unwrap_or("timeout"),
                            "store unreachable at shutdown; CDRs saved to file"
                        );
                    }
                    Err(e) => {
                        tracing::error!(cdrs = left.len(), error = %e, "CDRs could not be saved");
                    }
                }
                cdrs_spilled = Some((left.len(), path));
            }
        }
        // The CDRs written, the webhook gets what it can of them; what it has not taken
        // stays in the store's outbox for the node's next start (or, in a cluster, for a
        // survivor).
        if let Some(webhook) = &self.cdr_webhook {
            if !webhook.drain(OUTBOX_DRAIN_TIMEOUT).await {
                tracing::warn!("CDRs not delivered to the CDR webhook before shutdown; they stay in the store's outbox");
            }
        }
        // The calls are over and their CDRs written: the node leaves the cluster in good
        // order, so no survivor takes it for lost.
        if let Some((cluster, task)) = &self.cluster {
            task.abort();
            cluster.leave().await;
        }

        if let Some(sip) = self.sip_udp {
            sip.stop().await;
        }
        if let Some(sip) = self.sip_tcp {
            sip.stop().await;
        }
        if let Some(sip) = self.sip_tls {
            sip.stop().await;
        }
        if let Some(sip) = self.sip_ws {
            sip.stop().await;
        }
        let media = self.media.clone();
        let _ = tokio::task::spawn_blocking(move || media.stop()).await;
        let _ = self.http_stop.send(());
        if let Err(e) = self.http_task.await {
            tracing::warn!(error = %e, "HTTP server task failed");
        }
        // No more webhooks: the calls' last words (terminate, reject) reach Meta.
        for task in &self.background {
            task.abort();
        }
        if let Some(outbox) = self.outbox {
            let left = outbox.drain(OUTBOX_DRAIN_TIMEOUT).await;
            if left > 0 {
                tracing::error!(left, "actions for Meta not sent before shutdown");
            }
        }
        self.root.stop(Some("node stopping".into()));
        let _ = self.root_task.await;
        self.store.close().await;
        tracing::info!(cdrs_flushed, hung_up, "waswitch stopped");
        StopReport {
            hung_up,
            cdrs_flushed,
            cdrs_spilled,
        }
    }
}

/// The trunks the UDP listener probes with OPTIONS: UDP trunks with an interval and an IP
/// address. Trunks named by host name are not probed yet (no resolver); they stay usable.
fn probe_targets(config: &Config) -> Vec<ProbeTarget> {
    use crate::sip::uri::Host;
    let mut out = Vec::new();
    for t in &config.trunks {
        let Some(interval) = t.options_interval else {
            continue;
        };
        let ip: std::net::IpAddr = match &t.uri.host {
            Host::V4(a) => (*a).into(),
            Host::V6(a) => (*a).into(),
            _ => {
                tracing::warn!(trunk = %t.name, "trunk named by host name: not probed");
                continue;
            }
        };
        if t.transport != crate::config::Transport::Udp {
            tracing::warn!(trunk = %t.name, "OPTIONS probes run over UDP only: trunk not probed");
            continue;
        }
        out.push(ProbeTarget {
            name: t.name.clone(),
            address: SocketAddr::new(ip, t.uri.port.unwrap_or(5060)),
            interval,
        });
    }
    out
}

/// Asks the current CDR writer to write everything queued. The writer may be restarting
/// after a failure, so it is looked up again until the deadline.
async fn flush_cdrs(root: &ActorRef<RootMsg>) -> Result<u64, String> {
    let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
    loop {
        let writer = match root
            .call(RootMsg::CdrWriter, Some(Duration::from_secs(1)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(w)) => w,
            _ => None,
        };
        if let Some(writer) = writer {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Ok(ractor::rpc::CallResult::Success(result)) =
                writer.call(CdrWriterMsg::Flush, Some(remaining)).await
            {
                return result;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("CDR writer did not finish in time".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spill_path(node_id: &str) -> PathBuf {
    PathBuf::from(format!("cdr-unwritten-{node_id}-{}.jsonl", now_ms()))
}

/// Every CDR, as it is queued for the store, goes to the app that drove the call (its
/// `call.ended`) and, for an answered user-initiated call, to the permission service (a
/// connected call resets the pair's request limits). A full queue loses the copy (logged),
/// never the stored record; the CDR webhook sends from the store.
fn cdr_fan_out(
    permissions: crate::permission::service::Permissions,
    apps: crate::call::app::Apps,
) -> tokio::sync::mpsc::Sender<crate::store::Cdr> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::store::Cdr>(CDR_TAP_CAPACITY);
    tokio::spawn(async move {
        while let Some(cdr) = rx.recv().await {
            // Every ended call's CDR comes here: its MOS, when its media carried packets.
            if let Some(media) = cdr.media.as_ref().filter(|m| m.packets > 0) {
                metrics::histogram!(telemetry::CALL_MOS, "direction" => cdr.direction.as_str())
                    .record(media.mos_centi as f64 / 100.0);
            }
            // The app that drove the call hears of its end, with its CDR.
            let app = cdr
                .control
                .as_ref()
                .and_then(|c| c.app.as_deref())
                .and_then(|name| apps.get(name));
            if let Some(app) = app {
                app.notify(serde_json::json!({
                    "event": "call.ended",
                    "call_id": cdr.call_id,
                    "business_number": cdr.business_number,
                    "cdr": cdr,
                }));
            }
            let reset = match (&cdr.business_number, &cdr.customer_wa_id, cdr.answered_at) {
                (Some(b), Some(w), Some(answered_at))
                    if cdr.direction == crate::store::Direction::UserInitiated =>
                {
                    let mut context = serde_json::Map::new();
                    context.insert("call_id".into(), serde_json::json!(cdr.call_id));
                    if let Some(id) = &cdr.wa_call_id {
                        context.insert("wa_call_id".into(), serde_json::json!(id));
                    }
                    Some((
                        crate::permission::service::Pair::new(b, w),
                        answered_at,
                        context,
                    ))
                }
                _ => None,
            };
            // On a task of its own: a pair busy with a request to Meta never holds up the
            // CDRs behind it.
            if let Some((pair, answered_at, context)) = reset {
                let service = permissions.clone();
                permissions.background().spawn("request limits reset", async move {
                    if let Err(e) = service
                        .user_call_connected(&pair, answered_at, context)
                        .await
                    {
                        tracing::warn!(error = %e, "a connected call's reset of the request limits not recorded");
                    }
                });
            }
        }
    });
    tx
}
