//! This node's place in a cluster (nodes on one PostgreSQL database): its heartbeat, the
//! calls it owns, and Meta's webhooks for calls another node owns.
//!
//! Meta sends every webhook to one URL, behind any HTTP load balancer, so a webhook for a
//! call can reach any node. The node that has the call registers it (by the switch's call
//! id, and by each of Meta's ids as it learns them) with a lease it renews every second
//! while the call lives. A node receiving a delivery that names a call it does not have
//! looks the owner up and forwards the delivery there, unchanged and with Meta's own
//! signature, adding a signature of its own (the hop's). The owner checks both, and takes
//! from it only the events of its own calls; the receiving node takes the rest. A delivery
//! that cannot be forwarded is answered 503, and Meta's retry brings it again.
//!
//! A new call (`connect` with Meta's offer) is taken by the node that receives it: the load
//! balancer in front already spreads them, and the call needs no lookup before it rings.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::sync::mpsc;

use super::registry::CallRegistry;
use super::CallId;
use crate::clock::now_ms;
use crate::meta::ingress::{BoxFuture, CallOwners};
use crate::store::cluster::{call_key, wa_key};
use crate::store::Store;

/// How often a node writes its heartbeat and renews its calls' leases.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node silent this long (three heartbeats) is taken as lost: its calls are closed out by a survivor.
pub(crate) const ALIVE_MS: i64 = 3_000;
/// How long a call's lease lasts past its last renewal.
const LEASE_MS: i64 = 30_000;
/// The header of the hop's signature: `t=<unix s>,node=<id>,v1=sha256=<hex>`, the
/// HMAC-SHA256 of `<t>.<node>.<body>`.
pub(crate) const HOP_HEADER: &str = "x-waswitch-hop";
/// How far a hop's time may be from ours.
const HOP_WINDOW_SECS: u64 = 300;
/// How long a forward may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// Registrations queued for the register at most; beyond, one is dropped (and logged): the
/// lease of a call whose registration is lost only means its webhooks are not forwarded.
const CLAIM_QUEUE: usize = 10_000;

/// A change to the calls this node owns.
#[derive(Debug)]
pub(crate) enum Claim {
    /// Owns call `call_id` by these keys; `detail` is what its CDR starts from.
    Own {
        call_id: String,
        keys: Vec<String>,
        detail: Option<CallDetail>,
    },
    /// The call of `key` was answered at `at`.
    Answered { key: String, at: i64 },
    /// No longer owns them.
    Release(Vec<String>),
}

/// What a survivor writes a lost node's call's CDR from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct CallDetail {
    direction: crate::store::Direction,
    business_number: Option<String>,
    customer_wa_id: Option<String>,
    sip_call_id: Option<String>,
    trunk: Option<String>,
    offered_at: i64,
}

impl CallDetail {
    /// The call as it started.
    pub(crate) fn of(entry: &super::registry::CallEntry) -> CallDetail {
        CallDetail {
            direction: entry.offer.direction,
            business_number: entry.offer.business_number.clone(),
            customer_wa_id: entry.offer.customer_wa_id.clone(),
            sip_call_id: entry.offer.sip_call_id.clone(),
            trunk: entry.offer.trunk.clone(),
            offered_at: entry.offered_at,
        }
    }
}

/// This node in its cluster.
pub(crate) struct Cluster {
    store: Store,
    /// Settles a lost node's permission holds.
    permissions: crate::permission::service::Permissions,
    node_id: String,
    registry: CallRegistry,
    /// Where the other nodes reach this one (known once the HTTP listener is bound).
    url: OnceLock<String>,
    /// Signs and checks the hops between nodes (derived from Meta's app secret, which every
    /// node of the cluster holds).
    hop_key: String,
    http: reqwest::Client,
    draining: std::sync::atomic::AtomicBool,
    /// The CDR webhook, when configured: a lost node's CDRs (written here) and those it had
    /// not delivered are sent by this node.
    webhook: Option<crate::store::webhook::CdrWebhook>,
    /// Where the CDRs this node writes for a lost node's calls go besides the store (the
    /// request limits of an answered call are reset by them, as by any CDR).
    ended: OnceLock<mpsc::Sender<crate::store::Cdr>>,
    /// The database's clock less this node's (ms), measured at each heartbeat.
    skew: std::sync::atomic::AtomicI64,
    /// The node's calls (hung up when the node finds itself taken for lost).
    calls: OnceLock<super::Calls>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .field("url", &self.url.get())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// This node (`node_id`) of the cluster on `store`: it registers the calls of
    /// `registry`, and signs hops with a key derived from `app_secret`. Its heartbeat starts
    /// once its URL is known ([`Cluster::set_url`]).
    pub(crate) fn start(
        store: Store,
        permissions: crate::permission::service::Permissions,
        node_id: &str,
        registry: CallRegistry,
        app_secret: &[u8],
        webhook: Option<crate::store::webhook::CdrWebhook>,
    ) -> (Arc<Cluster>, tokio::task::JoinHandle<()>) {
        let hop_key = crate::meta::signature::sign(app_secret, b"waswitch cluster hop");
        let (tx, rx) = mpsc::channel(CLAIM_QUEUE);
        registry.watch_owners(tx);
        let cluster = Arc::new(Cluster {
            store,
            permissions,
            node_id: node_id.to_string(),
            registry,
            url: OnceLock::new(),
            hop_key,
            http: reqwest::Client::builder()
                .timeout(FORWARD_TIMEOUT)
                .build()
                .unwrap_or_default(),
            draining: std::sync::atomic::AtomicBool::new(false),
            webhook,
            ended: OnceLock::new(),
            skew: std::sync::atomic::AtomicI64::new(0),
            calls: OnceLock::new(),
        });
        // Registrations and the heartbeat on tasks of their own: a slow write of one never
        // holds the other up (a node late with its heartbeat is taken as lost).
        let claims = tokio::spawn(Arc::clone(&cluster).write_claims(rx));
        let beats = tokio::spawn(Arc::clone(&cluster).run());
        let task = tokio::spawn(async move {
            let _ = tokio::join!(claims, beats);
        });
        (cluster, task)
    }

    /// Where the other nodes reach this one's HTTP listener. Before the node takes calls:
    /// calls a previous run of this node left in the register (it stopped without leaving)
    /// are closed out, and its first heartbeat is written, so webhooks for its first calls
    /// find it.
    /// Refused when another node with this node's id is alive: two nodes of one id would
    /// take each other's calls for their own.
    pub(crate) async fn set_url(&self, url: String) -> Result<(), String> {
        match self
            .store
            .node_heard(&self.node_id, self.now() - ALIVE_MS)
            .await
        {
            Ok(Some(other)) if other != url => {
                return Err(format!(
                    "node id {:?} is in use by the node at {other}; give each node its own (node.id or WASWITCH_NODE_ID)",
                    self.node_id
                ))
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the cluster's nodes could not be read"),
        }
        if self.url.set(url).is_err() {
            tracing::warn!("the node's cluster URL was set twice; the first stands");
        }
        // Its permission holds were settled as the node started (`Permissions::load`).
        self.close_out_calls(&self.node_id).await;
        self.beat(true).await;
        Ok(())
    }

    /// The node stops in good order (its calls are over): it leaves the register, so no
    /// survivor takes it for lost.
    pub(crate) async fn leave(&self) {
        let left = async {
            self.store.forget_calls(&self.node_id).await?;
            self.store.leave_cluster(&self.node_id).await
        };
        if let Err(e) = left.await {
            tracing::warn!(error = %e, "the node could not leave the cluster's register; a survivor closes it out");
        }
    }

    /// The time heartbeats and leases are compared by: the database's clock, as last
    /// measured (so nodes whose clocks disagree still agree on who is silent).
    fn now(&self) -> i64 {
        now_ms() + self.skew.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Measures how far the database's clock is from this node's.
    async fn measure_skew(&self) {
        let before = now_ms();
        match self.store.clock_ms().await {
            Ok(db) => {
                let after = now_ms();
                self.skew.store(
                    db - (before + after) / 2,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            Err(e) => tracing::warn!(error = %e, "the database's clock could not be read"),
        }
    }

    /// Writes the heartbeat (with the state) and renews the leases of the node's calls.
    ///
    /// A node a survivor took for lost (it was silent too long: a stalled process, a
    /// partition from the database) finds out here. The cluster has already closed its calls
    /// out, settled their permissions and sent their CDRs, so it hangs them up rather than
    /// carry on with calls nobody else counts, and joins again. With `rejoin` (the node's
    /// first heartbeat of a run) the heartbeat is written whatever the register says.
    async fn beat(&self, rejoin: bool) {
        let Some(url) = self.url.get() else {
            return;
        };
        let state = if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            "draining"
        } else {
            "up"
        };
        self.measure_skew().await;
        let now = self.now();
        let beat = async {
            let written = if rejoin {
                self.store.heartbeat(&self.node_id, url, state, now).await?;
                true
            } else {
                self.store
                    .heartbeat_unless_lost(&self.node_id, url, state, now)
                    .await?
            };
            if written {
                self.store
                    .renew_calls(&self.node_id, now + LEASE_MS)
                    .await?;
            }
            Ok::<bool, crate::store::StoreError>(written)
        };
        match beat.await {
            Ok(true) => {}
            Ok(false) => self.fenced(url, state).await,
            Err(e) => tracing::warn!(error = %e, "cluster heartbeat not written"),
        }
    }

    /// This node was taken for lost while it ran: its calls end, and it joins again.
    async fn fenced(&self, url: &str, state: &str) {
        let calls = self.registry.len();
        tracing::error!(
            calls,
            "this node was taken for lost by another (silent for {ALIVE_MS} ms): its calls were closed out there; hanging them up and joining again"
        );
        metrics::counter!(crate::telemetry::CLUSTER_FENCED_TOTAL).increment(1);
        if let Some(node_calls) = self.calls.get() {
            node_calls.hangup_all("node_lost").await;
        }
        if let Err(e) = self
            .store
            .heartbeat(&self.node_id, url, state, self.now())
            .await
        {
            tracing::warn!(error = %e, "cluster heartbeat not written");
        }
    }

    /// The node's calls, hung up if the cluster takes the node for lost while it runs.
    pub(crate) fn set_calls(&self, calls: super::Calls) {
        if self.calls.set(calls).is_err() {
            tracing::warn!("the cluster's calls were set twice; the first stand");
        }
    }

    /// The CDRs written for lost nodes' calls are handed to `tap` too, as the node's own
    /// are (`CdrQueue::set_tap`).
    pub(crate) fn set_tap(&self, tap: mpsc::Sender<crate::store::Cdr>) {
        if self.ended.set(tap).is_err() {
            tracing::warn!("the cluster's CDR tap was set twice; the first stands");
        }
    }

    /// The node takes no new calls: its heartbeat says so.
    pub(crate) fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The heartbeat (with the leases' renewal) every second, and the other nodes watched.
    async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.beat(false).await;
            self.watch_peers().await;
        }
    }

    /// Writes registrations as they come.
    async fn write_claims(self: Arc<Self>, mut claims: mpsc::Receiver<Claim>) {
        while let Some(claim) = claims.recv().await {
            let result = match &claim {
                Claim::Own {
                    call_id,
                    keys,
                    detail,
                } => {
                    let detail = detail.as_ref().and_then(|d| serde_json::to_string(d).ok());
                    self.store
                        .claim_calls(
                            keys,
                            &self.node_id,
                            call_id,
                            self.now() + LEASE_MS,
                            detail.as_deref(),
                        )
                        .await
                }
                Claim::Answered { key, at } => self.store.call_answered(key, *at).await,
                Claim::Release(keys) => self.store.release_calls(keys, &self.node_id).await,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, ?claim, "call ownership not written; webhooks for it reach only the node Meta sends them to");
            }
        }
    }

    /// Takes over the nodes silent for [`ALIVE_MS`] (one survivor each): their calls are
    /// closed out and their permission holds settled. The CDRs waiting for the webhook of a
    /// node that is not alive (lost, or left with some undelivered) are adopted.
    async fn watch_peers(&self) {
        let before = self.now() - ALIVE_MS;
        if let Some(webhook) = &self.webhook {
            match self.store.webhook_adopt(&self.node_id, before).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(cdrs = n, "CDRs of nodes gone adopted for the CDR webhook");
                    webhook.wake();
                }
                Err(e) => tracing::warn!(error = %e, "the CDR webhook's outbox not adopted"),
            }
        }
        let stale = match self.store.stale_nodes(&self.node_id, before).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the cluster's nodes could not be read");
                return;
            }
        };
        for node in stale {
            match self.store.take_over(&node, before).await {
                Ok(true) => self.close_out(&node).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(%node, error = %e, "a silent node not taken over"),
            }
        }
    }

    /// Closes out lost node `node`'s calls (their media went with it): a CDR for each, with
    /// cause `node_lost`, and its permission holds settled by the stage each reached.
    async fn close_out(&self, node: &str) {
        tracing::warn!(%node, "node lost: closing its calls out");
        metrics::counter!(crate::telemetry::CLUSTER_NODES_LOST_TOTAL).increment(1);
        self.close_out_calls(node).await;
        match self.permissions.settle_node(node).await {
            Ok(n) => tracing::info!(%node, settled = n, "a lost node's permission holds settled"),
            Err(e) => {
                tracing::error!(%node, error = %e, "a lost node's permission holds not all settled; the node settles them when it starts again")
            }
        }
    }

    /// Writes a CDR (cause `node_lost`) for each call `node` has in the register, then
    /// forgets them; nothing is forgotten before its CDR is written (with its outbox row for
    /// this node's CDR webhook).
    async fn close_out_calls(&self, node: &str) {
        let calls = match self.store.lost_calls(node).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%node, error = %e, "a lost node's calls could not be read; their leases lapse");
                return;
            }
        };
        if calls.is_empty() {
            return;
        }
        tracing::warn!(%node, calls = calls.len(), "closing out calls whose node is gone");
        let now = now_ms();
        let cdrs: Vec<crate::store::Cdr> = calls
            .iter()
            .filter_map(|c| {
                let d: CallDetail = serde_json::from_str(c.detail.as_deref()?).ok()?;
                Some(crate::store::Cdr {
                    call_id: c.call_id.clone(),
                    node_id: node.to_string(),
                    direction: d.direction,
                    business_number: d.business_number,
                    customer_wa_id: d.customer_wa_id,
                    wa_call_id: c.wa_call_ids.first().cloned(),
                    sip_call_id: d.sip_call_id,
                    trunk: d.trunk,
                    offered_at: d.offered_at,
                    ringing_at: None,
                    answered_at: c.answered_at,
                    ended_at: now,
                    duration_ms: c.answered_at.map_or(0, |a| (now - a).max(0)),
                    outcome: crate::store::CallOutcome::Failed,
                    hangup_by: crate::store::HangupParty::Switch,
                    end_cause: "node_lost".into(),
                    failure: Some(format!("node {node} lost (no heartbeat for 3 s)")),
                    media: None,
                    codec_path: None,
                    control: None,
                    recording: None,
                    meta_recording_id: None,
                    meta_transcript_id: None,
                })
            })
            .collect();
        if !cdrs.is_empty() {
            let webhook = self.webhook.as_ref();
            if let Err(e) = self
                .store
                .insert_cdrs(&cdrs, webhook.map(|w| w.owner()))
                .await
            {
                tracing::error!(%node, error = %e, "a lost node's CDRs not written; its calls stay in the register");
                return;
            }
            if let Some(w) = webhook {
                w.wake();
            }
            tracing::info!(%node, cdrs = cdrs.len(), "a lost node's calls closed out");
            if let Some(tap) = self.ended.get() {
                for cdr in &cdrs {
                    if tap.try_send(cdr.clone()).is_err() {
                        tracing::warn!(call_id = %cdr.call_id, "CDR tap full: a lost call's request limits not reset");
                    }
                }
            }
        }
        if let Err(e) = self.store.forget_calls(node).await {
            tracing::warn!(%node, error = %e, "a lost node's calls not forgotten; their leases lapse");
        }
    }

    /// The hop's signature of `body` sent by `node` at `t`: `sha256=<hex>`.
    fn hop_signature(&self, t: u64, node: &str, body: &[u8]) -> String {
        let mut signed = format!("{t}.{node}.").into_bytes();
        signed.extend_from_slice(body);
        crate::meta::signature::sign(self.hop_key.as_bytes(), &signed)
    }
}

fn unix_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

impl CallOwners for Cluster {
    fn here(&self, wa_call_id: &str, opaque: Option<&str>) -> bool {
        self.registry.by_wa_call_id(wa_call_id).is_some()
            || opaque
                .filter(|o| !o.is_empty())
                .is_some_and(|o| self.registry.get(&CallId::from(o)).is_some())
    }

    fn peers(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            // Unknown: as if there were (a call is waited for rather than taken here).
            self.store
                .live_peers(&self.node_id, self.now() - ALIVE_MS)
                .await
                .map_or(true, |n| n > 0)
        })
    }

    fn elsewhere<'a>(
        &'a self,
        wa_call_id: &'a str,
        opaque: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, String>> {
        Box::pin(async move {
            let now = self.now();
            let mut keys = vec![wa_key(wa_call_id)];
            if let Some(o) = opaque.filter(|o| !o.is_empty()) {
                keys.push(call_key(o));
            }
            for key in keys {
                match self.store.call_owner(&key, now, ALIVE_MS).await {
                    Ok(Some(owner)) if owner.node_id != self.node_id => {
                        return Ok(Some((owner.node_id, owner.url)));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(None)
        })
    }

    fn forward<'a>(
        &'a self,
        url: &'a str,
        meta_signature: &'a [u8],
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let t = unix_secs();
            let hop = format!(
                "t={t},node={},v1={}",
                self.node_id,
                self.hop_signature(t, &self.node_id, body)
            );
            let response = self
                .http
                .post(format!(
                    "{}{}",
                    url.trim_end_matches('/'),
                    crate::meta::ingress::PATH
                ))
                .header(crate::meta::signature::HEADER, meta_signature)
                .header(HOP_HEADER, hop)
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("{url} answered {}", response.status()))
            }
        })
    }

    fn forwarded_by(&self, headers: &HeaderMap, body: &[u8]) -> Result<Option<String>, String> {
        let Some(hop) = headers.get(HOP_HEADER) else {
            return Ok(None);
        };
        let hop = hop.to_str().map_err(|_| "hop header is not text")?;
        let (mut t, mut node, mut sig) = (None, None, None);
        for part in hop.split(',') {
            match part.split_once('=') {
                Some(("t", v)) => t = v.parse::<u64>().ok(),
                Some(("node", v)) => node = Some(v),
                Some(("v1", v)) => sig = Some(v),
                _ => {}
            }
        }
        let (Some(t), Some(node), Some(sig)) = (t, node, sig) else {
            return Err("hop header incomplete".into());
        };
        if unix_secs().abs_diff(t) > HOP_WINDOW_SECS {
            return Err("hop signature too old".into());
        }
        let expected = self.hop_signature(t, node, body);
        let same = expected.len() == sig.len()
            && expected
                .bytes()
                .zip(sig.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err("hop signature does not match".into());
        }
        Ok(Some(node.to_string()))
    }
}
