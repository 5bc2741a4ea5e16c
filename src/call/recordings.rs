//! Call recordings as a service of the node: the policy that says which calls are recorded
//! and the consent announcement before, where a finished recording goes (its digest, its
//! upload to the bucket, its row in the store, its signed `recording.ready` event), the
//! retention sweep (each deletion in the audit trail), and Meta's own recordings and
//! transcripts (fetched with the access token, their digest checked, kept alike and linked
//! to the call's CDR).
//!
//! A recording is written by the media plane to `recording.dir/<id>.<ext>`; with a bucket
//! it is uploaded once final and the local file removed. An upload that fails leaves the
//! file and its row (`storage = local`) for the sweeper to try again, so nothing is lost
//! to a bucket that is down for a while.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::audit::{Actor, AuditEntry};
use crate::config::RecordingConfig;
use crate::media::prompt::Prompt;
use crate::media::record::Format;
use crate::store::audit::AuditRepository;
use crate::store::blobs::Blobs;
use crate::store::{CdrRecording, Recording, Store};
use crate::telemetry;

/// Recordings read per page of a sweep pass.
const SWEEP_BATCH: i64 = 500;

/// How long Meta keeps a recording (its recordings whose call has no CDR here after that
/// are no longer looked for).
const META_RETENTION_MS: i64 = 8 * 86_400_000;

/// `path` made absolute (against the working directory), so the store's record of a
/// local file still names it after a restart elsewhere.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The node's recordings. Cheap to clone.
#[derive(Clone)]
pub struct Recordings {
    inner: Arc<Inner>,
}

struct Inner {
    config: RecordingConfig,
    /// This node (whose disk local recordings are on).
    node_id: String,
    blobs: Blobs,
    store: Option<Store>,
    /// Signed events (`recording.ready`) go here, when a webhook is configured.
    events: Option<mpsc::Sender<serde_json::Value>>,
}

impl std::fmt::Debug for Recordings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recordings")
            .field("blobs", &self.inner.blobs)
            .finish_non_exhaustive()
    }
}

/// A recording about to start: its id, the file it is written to, and its key in storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Its id.
    pub id: String,
    /// The local file.
    pub path: PathBuf,
    /// Its key in the bucket (with local storage, the local path).
    pub key: String,
    /// How it is written.
    pub format: Format,
}

/// A recording whose file is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// What it was planned as.
    pub planned: Planned,
    /// Its size.
    pub bytes: u64,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
}

/// Whose call a recording is of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    /// The switch's call id.
    pub call_id: String,
    /// The business number (digits).
    pub business_number: String,
    /// The customer's WhatsApp id.
    pub customer: Option<String>,
    /// The app that asked for it (empty: none).
    pub app: String,
}

/// A recording to make: its file, who keeps it and whose call it is, how its channels lie,
/// and who hears when it is kept.
pub struct Job {
    /// The file.
    pub planned: Planned,
    /// Keeps it once final.
    pub recordings: Recordings,
    /// Whose call.
    pub owner: Owner,
    /// The customer is the pair's side B: the channels are swapped so the customer is
    /// always on the left.
    pub swap: bool,
    /// Hears the recording once it is kept (`None`: nothing was recorded, or it was lost).
    pub kept: Option<tokio::sync::oneshot::Sender<Option<Saved>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("planned", &self.planned)
            .field("swap", &self.swap)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// Nothing was recorded (stopped during the announcement, or never started).
    pub fn not_recorded(self) {
        if let Some(kept) = self.kept {
            let _ = kept.send(None);
        }
    }

    /// The recorder's outcome: kept (uploaded, stored, announced), or counted as lost and
    /// its partial file removed.
    pub async fn keep(self, saved: Result<Saved, String>) {
        let outcome = match saved {
            Ok(saved) => {
                let kept = self.recordings.keep(&saved, &self.owner).await;
                kept.then_some(saved)
            }
            Err(e) => {
                tracing::warn!(recording = %self.planned.id, error = %e, "recording lost");
                metrics::counter!(telemetry::RECORDINGS_TOTAL, "source" => "switch", "outcome" => "failed")
                    .increment(1);
                let mut part = self.planned.path.clone().into_os_string();
                part.push(".part");
                let _ = tokio::fs::remove_file(PathBuf::from(part)).await;
                None
            }
        };
        if let Some(kept) = self.kept {
            let _ = kept.send(outcome);
        }
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Swept {
    /// Recordings deleted past their retention.
    pub deleted: u64,
    /// Recordings uploaded that had been left local.
    pub uploaded: u64,
    /// Meta's recordings linked to a CDR written since they came.
    pub linked: u64,
}

/// Meta's recording or transcript of a call, as its webhook announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaMedia {
    /// Meta's call id.
    pub wa_call_id: String,
    /// Meta's media id.
    pub media_id: String,
    /// A transcript (JSON) rather than the audio.
    pub transcript: bool,
    /// Where to fetch it (with the access token).
    pub url: String,
    /// Its SHA-256, base64, as Meta gives it.
    pub sha256_base64: String,
    /// Its media type.
    pub mime_type: String,
    /// The business number (digits).
    pub business_number: String,
    /// The customer's WhatsApp id.
    pub customer: Option<String>,
}

/// The size and hex SHA-256 of a file.
pub fn digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((bytes, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Recordings {
    /// The recordings `config` describes, kept in `store`; `events` hears `recording.ready`.
    /// Its directory is made with the first recording.
    pub fn new(
        config: RecordingConfig,
        node_id: &str,
        store: Option<Store>,
        events: Option<mpsc::Sender<serde_json::Value>>,
    ) -> Result<Recordings, String> {
        let blobs = Blobs::new(&config.storage)?;
        Ok(Recordings {
            inner: Arc::new(Inner {
                config,
                node_id: node_id.to_string(),
                blobs,
                store,
                events,
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RecordingConfig {
        &self.inner.config
    }

    /// This node (whose disk its local recordings are on).
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Where recordings are kept.
    pub fn blobs(&self) -> &Blobs {
        &self.inner.blobs
    }

    /// The consent announcement for a customer whose WhatsApp id is `wa_id`.
    pub fn consent_for(&self, wa_id: Option<&str>) -> Option<Prompt> {
        let country = wa_id.and_then(crate::number::country);
        self.inner.config.consent_for(country.as_deref()).cloned()
    }

    /// A new recording of call `call_id`.
    pub fn plan(&self, call_id: &str) -> Planned {
        let format = self.inner.config.format;
        let id = format!(
            "{call_id}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let name = format!("{id}.{}", format.extension());
        let path = absolute(&self.inner.config.dir.join(&name));
        let key = self.inner.blobs.key(&path);
        Planned {
            id,
            path,
            key,
            format,
        }
    }

    /// The CDR's entry of a saved recording.
    pub fn cdr_entry(&self, saved: &Saved) -> CdrRecording {
        CdrRecording {
            id: saved.planned.id.clone(),
            file: self.inner.blobs.location(&saved.planned.key),
            sha256: saved.sha256.clone(),
        }
    }

    /// Keeps a saved recording: uploaded (with a bucket), recorded in the store, and
    /// announced (`recording.ready`). A failed upload leaves it local for the sweeper.
    /// Whether it is kept.
    pub async fn keep(&self, saved: &Saved, owner: &Owner) -> bool {
        let mut row = Recording {
            id: saved.planned.id.clone(),
            call_id: owner.call_id.clone(),
            business_number: owner.business_number.clone(),
            app: owner.app.clone(),
            path: saved.planned.path.display().to_string(),
            bytes: saved.bytes as i64,
            created_at_ms: crate::clock::now_ms(),
            sha256: Some(saved.sha256.clone()),
            storage: "local".into(),
            media_type: saved.planned.format.mime().into(),
            source: "switch".into(),
            kind: "audio".into(),
            customer: owner.customer.clone(),
            node_id: Some(self.inner.node_id.clone()),
        };
        let kept = self
            .store_row(&mut row, &saved.planned.path, &saved.planned.key)
            .await;
        let outcome = if kept { "kept" } else { "failed" };
        metrics::counter!(telemetry::RECORDINGS_TOTAL, "source" => "switch", "outcome" => outcome)
            .increment(1);
        if kept {
            self.announce(&row);
        }
        kept
    }

    /// Uploads (with a bucket) then writes the row; whether the row is written.
    async fn store_row(&self, row: &mut Recording, local: &Path, key: &str) -> bool {
        let blobs = &self.inner.blobs;
        let uploaded = match blobs {
            Blobs::Local => false,
            _ => match blobs.upload(local, key).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(recording = %row.id, error = %e, "recording not uploaded; kept locally and retried by the sweeper");
                    false
                }
            },
        };
        if uploaded {
            row.storage = blobs.name().into();
            row.path = key.to_string();
        }
        let Some(store) = &self.inner.store else {
            if uploaded {
                let _ = tokio::fs::remove_file(local).await;
            }
            return true;
        };
        // A store that fails for a moment is tried again before the recording is given up.
        let mut written = store.put_recording(row).await;
        for wait in [200u64, 1000, 5000] {
            if written.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            written = store.put_recording(row).await;
        }
        match written {
            Ok(()) => {
                if uploaded {
                    if let Err(e) = tokio::fs::remove_file(local).await {
                        tracing::warn!(recording = %row.id, error = %e, "uploaded recording's local file not removed");
                    }
                }
                tracing::info!(recording = %row.id, call_id = %row.call_id, storage = %row.storage, bytes = row.bytes, "recording kept");
                true
            }
            Err(e) => {
                tracing::error!(recording = %row.id, error = %e, "recording not recorded in the store; its file stays");
                false
            }
        }
    }

    /// The signed `recording.ready` event.
    fn announce(&self, row: &Recording) {
        let Some(events) = &self.inner.events else {
            return;
        };
        let event = json!({
            "event": "recording.ready",
            "call_id": row.call_id,
            "recording_id": row.id,
            "business_number": row.business_number,
            "source": row.source,
            "kind": row.kind,
            "media_type": row.media_type,
            "bytes": row.bytes,
            "sha256": row.sha256,
            "url": format!("/v1/recordings/{}", row.id),
        });
        if events.try_send(event).is_err() {
            tracing::warn!(recording = %row.id, "recording.ready not sent: the event queue is full");
        }
    }

    /// Deletes recording `r`: its row first (so two nodes, or the API and the sweeper,
    /// never both delete it), then its bytes, then the audit record; `reason` says why.
    pub async fn delete(&self, r: &Recording, reason: &'static str) -> Result<(), String> {
        let local = r.storage == "local";
        if !local && r.storage != self.inner.blobs.name() {
            return Err(format!(
                "recording {} is kept in {} storage, which this node does not use",
                r.id, r.storage
            ));
        }
        if local
            && r.node_id
                .as_deref()
                .is_some_and(|n| n != self.inner.node_id)
        {
            return Err(format!(
                "recording {} is on node {}'s disk",
                r.id,
                r.node_id.as_deref().unwrap_or("")
            ));
        }
        let Some(store) = &self.inner.store else {
            return self
                .inner
                .blobs
                .remove(&r.path, local)
                .await
                .map_err(|e| format!("recording {}: {e}", r.id));
        };
        let claimed = store
            .delete_recording(&r.id)
            .await
            .map_err(|e| format!("recording {}: {e}", r.id))?;
        if !claimed {
            // Deleted meanwhile, by whoever got there first: theirs is the audit record.
            return Ok(());
        }
        if local && !Path::new(&r.path).exists() {
            tracing::warn!(recording = %r.id, path = %r.path, "recording's file was already gone");
        }
        if let Err(e) = self.inner.blobs.remove(&r.path, local).await {
            tracing::error!(recording = %r.id, path = %r.path, error = %e, "recording's record deleted but its bytes not removed: remove them by hand");
        }
        let entry = AuditEntry {
            at: crate::clock::now_ms(),
            business_number: r.business_number.clone(),
            wa_id: r.customer.clone().unwrap_or_default(),
            kind: "recording_deleted".into(),
            actor: if reason == "api" {
                Actor::Business
            } else {
                Actor::Switch
            },
            detail: json!({
                "recording_id": r.id,
                "call_id": r.call_id,
                "reason": reason,
                "source": r.source,
                "kind": r.kind,
                "storage": r.storage,
                "path": r.path,
                "sha256": r.sha256,
                "created_at_ms": r.created_at_ms,
                "retention_days": self.inner.config.retention.map(|d| d.as_secs() / 86_400),
            })
            .to_string(),
        };
        store.append_audit(&[entry]).await.map_err(|e| {
            format!(
                "recording {}: deleted, but its audit record not written: {e}",
                r.id
            )
        })?;
        metrics::counter!(telemetry::RECORDINGS_DELETED_TOTAL, "reason" => reason).increment(1);
        tracing::info!(recording = %r.id, reason, "recording deleted");
        Ok(())
    }

    /// One pass of the sweeper at `now_ms`: recordings past their retention deleted (each in
    /// the audit trail), uploads left on this node's disk retried, Meta's recordings linked
    /// to CDRs written since.
    pub async fn sweep(&self, now_ms: i64) -> Swept {
        let mut swept = Swept::default();
        let Some(store) = self.inner.store.clone() else {
            return swept;
        };
        let node = self.inner.node_id.clone();
        if let Some(keep) = self.inner.config.retention {
            let before = now_ms - keep.as_millis() as i64;
            // Page by page from the oldest; one that cannot be deleted is passed over.
            let mut after = (i64::MIN, String::new());
            loop {
                let page = match store
                    .recordings_before(before, &node, (after.0, &after.1), SWEEP_BATCH)
                    .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(error = %e, "retention sweep: recordings not read");
                        break;
                    }
                };
                for r in &page {
                    match self.delete(r, "retention").await {
                        Ok(()) => swept.deleted += 1,
                        Err(e) => {
                            tracing::warn!(error = %e, "recording past its retention not deleted")
                        }
                    }
                }
                match page.last() {
                    Some(last) if page.len() as i64 == SWEEP_BATCH => {
                        after = (last.created_at_ms, last.id.clone());
                    }
                    _ => break,
                }
            }
        }
        if !matches!(self.inner.blobs, Blobs::Local) {
            match store.local_recordings(&node, SWEEP_BATCH).await {
                Ok(left) => {
                    let mut pending = left.len();
                    metrics::gauge!(telemetry::RECORDING_UPLOADS_PENDING).set(pending as f64);
                    for mut r in left {
                        let local = PathBuf::from(&r.path);
                        let key = self.inner.blobs.key(&local);
                        if self.store_row(&mut r, &local, &key).await && r.storage != "local" {
                            swept.uploaded += 1;
                            pending = pending.saturating_sub(1);
                        }
                    }
                    metrics::gauge!(telemetry::RECORDING_UPLOADS_PENDING).set(pending as f64);
                }
                Err(e) => tracing::warn!(error = %e, "upload sweep: recordings not read"),
            }
        }
        match store
            .unlinked_meta_recordings(now_ms - META_RETENTION_MS, SWEEP_BATCH)
            .await
        {
            Ok(unlinked) => {
                for r in unlinked {
                    if let Ok(Some(call_id)) = store.call_of_wa_call(&r.call_id).await {
                        let transcript = r.kind == "transcript";
                        let linked = store
                            .link_meta_recording(&r.call_id, &r.id, transcript)
                            .await;
                        // The row names the switch's call once its CDR names the recording.
                        if linked.is_ok() && store.recording_call(&r.id, &call_id).await.is_ok() {
                            swept.linked += 1;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "link sweep: recordings not read"),
        }
        swept
    }

    /// Runs the sweeper every `recording.sweep_interval` until the task is dropped.
    pub async fn run_sweeper(self) {
        let mut tick = tokio::time::interval(self.inner.config.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let swept = self.sweep(crate::clock::now_ms()).await;
            if swept != Swept::default() {
                tracing::info!(
                    deleted = swept.deleted,
                    uploaded = swept.uploaded,
                    linked = swept.linked,
                    "recordings swept"
                );
            }
        }
    }

    /// Meta's recording or transcript `m`: fetched with `fetch` into a local file, its
    /// digest checked against Meta's, kept like the switch's own and linked to the call's
    /// CDR (now, or by the sweeper once the CDR is written). Its recording id.
    pub async fn keep_meta<F, Fut>(&self, m: &MetaMedia, fetch: F) -> Result<String, String>
    where
        F: FnOnce(String, PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<u64, String>>,
    {
        let result = self.fetch_meta(m, fetch).await;
        let outcome = if result.is_ok() { "kept" } else { "failed" };
        metrics::counter!(telemetry::RECORDINGS_TOTAL, "source" => "meta", "outcome" => outcome)
            .increment(1);
        result
    }

    async fn fetch_meta<F, Fut>(&self, m: &MetaMedia, fetch: F) -> Result<String, String>
    where
        F: FnOnce(String, PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<u64, String>>,
    {
        let safe: String = m
            .media_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(64)
            .collect();
        if safe.is_empty() {
            return Err(format!("Meta's media id {:?} names no file", m.media_id));
        }
        let (kind, ext) = if m.transcript {
            ("transcript", "json")
        } else {
            ("audio", "ogg")
        };
        let id = format!("meta-{safe}");
        let name = format!("{id}.{ext}");
        let path = absolute(&self.inner.config.dir.join(&name));
        // Two deliveries of the same media never write one file.
        let part = absolute(&self.inner.config.dir.join(format!(
            "{name}.{}.part",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )));
        tokio::fs::create_dir_all(&self.inner.config.dir)
            .await
            .map_err(|e| format!("recording.dir {}: {e}", self.inner.config.dir.display()))?;
        let fetched = fetch(m.url.clone(), part.clone()).await;
        let checked = match fetched {
            Ok(_) => {
                let part = part.clone();
                tokio::task::spawn_blocking(move || digest(&part))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|d| d.map_err(|e| e.to_string()))
            }
            Err(e) => Err(e),
        };
        let (bytes, sha256) = match checked {
            Ok(d) => d,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(format!("Meta's {kind} {} not fetched: {e}", m.media_id));
            }
        };
        let expected = digest_hex(&m.sha256_base64);
        if expected.as_deref() != Some(sha256.as_str()) {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(format!(
                "Meta's {kind} {}: its SHA-256 is {sha256}, Meta announced {:?}; not kept",
                m.media_id, m.sha256_base64
            ));
        }
        tokio::fs::rename(&part, &path)
            .await
            .map_err(|e| format!("Meta's {kind} {}: {e}", m.media_id))?;
        let store = self.inner.store.as_ref();
        let call_id = match store {
            Some(s) => s.call_of_wa_call(&m.wa_call_id).await.ok().flatten(),
            None => None,
        };
        let key = self.inner.blobs.key(&path);
        // Its call is Meta's id until the call's CDR names the recording.
        let mut linked = false;
        if let (Some(store), Some(_)) = (store, &call_id) {
            linked = store
                .link_meta_recording(&m.wa_call_id, &id, m.transcript)
                .await
                .unwrap_or(false);
        }
        let mut row = Recording {
            id: id.clone(),
            call_id: match &call_id {
                Some(c) if linked => c.clone(),
                _ => m.wa_call_id.clone(),
            },
            business_number: m.business_number.clone(),
            app: String::new(),
            path: path.display().to_string(),
            bytes: bytes as i64,
            created_at_ms: crate::clock::now_ms(),
            sha256: Some(sha256),
            storage: "local".into(),
            media_type: m.mime_type.clone(),
            source: "meta".into(),
            kind: kind.into(),
            customer: m.customer.clone(),
            node_id: Some(self.inner.node_id.clone()),
        };
        if !self.store_row(&mut row, &path, &key).await {
            return Err(format!(
                "Meta's {kind} {} not recorded in the store",
                m.media_id
            ));
        }
        if !linked {
            tracing::info!(recording = %id, wa_call_id = %m.wa_call_id, "Meta's recording kept; its CDR is linked by the sweeper once written");
        }
        self.announce(&row);
        Ok(id)
    }
}

/// Meta's digest as hex: base64 of the 32 bytes (as Meta's samples show it), or hex
/// already (`None` when it is neither).
fn digest_hex(given: &str) -> Option<String> {
    let given = given.trim();
    if given.len() == 64 && given.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(given.to_ascii_lowercase());
    }
    base64_to_hex(given)
}

/// A base64 digest as hex (`None` when it is not base64 of 32 bytes).
fn base64_to_hex(b64: &str) -> Option<String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64.trim()))
        .ok()?;
    (raw.len() == 32).then(|| hex(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RecordPolicy;

    #[test]
    fn meta_digests_are_read_from_base64() {
        let sha = Sha256::digest(b"abc");
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(sha);
        assert_eq!(base64_to_hex(&b64), Some(hex(&sha)));
        assert_eq!(base64_to_hex("not base64!"), None);
        assert_eq!(base64_to_hex("YWJj"), None, "three bytes are no SHA-256");
        assert_eq!(
            digest_hex(&hex(&sha).to_ascii_uppercase()),
            Some(hex(&sha)),
            "hex too"
        );
    }

    async fn store(dir: &Path) -> Store {
        Store::open(&crate::config::StoreConfig {
            url: crate::config::StoreUrl::Sqlite(dir.join("rec.db").display().to_string()),
            max_connections: 2,
            cdr_batch_size: 10,
            cdr_flush_interval: std::time::Duration::from_millis(10),
        })
        .await
        .expect("store")
    }

    #[tokio::test]
    async fn the_sweeper_deletes_what_is_past_its_retention_and_audits_each() {
        use crate::store::audit::{AuditFilter, AuditRepository};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        let config = RecordingConfig {
            dir: dir.path().join("rec"),
            retention: Some(std::time::Duration::from_secs(86_400)),
            ..RecordingConfig::default()
        };
        let recordings =
            Recordings::new(config, "node-1", Some(store.clone()), None).expect("recordings");
        std::fs::create_dir_all(dir.path().join("rec")).expect("dir");
        let now = crate::clock::now_ms();
        let mut ids = Vec::new();
        for (name, age_h) in [("old", 30i64), ("new", 2)] {
            let planned = recordings.plan(&format!("call-{name}"));
            std::fs::write(&planned.path, name.as_bytes()).expect("file");
            let (bytes, sha256) = digest(&planned.path).expect("digest");
            let saved = Saved {
                planned: planned.clone(),
                bytes,
                sha256,
            };
            let owner = Owner {
                call_id: format!("call-{name}"),
                business_number: "15551112222".into(),
                customer: Some("4915112345678".into()),
                app: String::new(),
            };
            recordings.keep(&saved, &owner).await;
            let mut row = store
                .recording(&planned.id)
                .await
                .expect("read")
                .expect("kept");
            row.created_at_ms = now - age_h * 3_600_000;
            store.put_recording(&row).await.expect("aged");
            ids.push(planned);
        }
        let swept = recordings.sweep(now).await;
        assert_eq!(swept.deleted, 1, "{swept:?}");
        let (old, new) = (&ids[0], &ids[1]);
        assert!(!old.path.exists(), "the old file is gone");
        assert!(new.path.exists(), "the recent one stays");
        assert!(store.recording(&old.id).await.expect("read").is_none());
        assert!(store.recording(&new.id).await.expect("read").is_some());
        let audit = store
            .audit_records(&AuditFilter::default())
            .await
            .expect("audit");
        let deleted: Vec<_> = audit
            .iter()
            .filter(|r| r.entry.kind == "recording_deleted")
            .collect();
        assert_eq!(deleted.len(), 1, "{audit:?}");
        let detail: serde_json::Value =
            serde_json::from_str(&deleted[0].entry.detail).expect("detail");
        assert_eq!(detail["recording_id"], old.id.as_str());
        assert_eq!(detail["reason"], "retention");
        assert_eq!(detail["retention_days"], 1);
        assert_eq!(deleted[0].entry.actor, Actor::Switch);
        assert_eq!(deleted[0].entry.wa_id, "4915112345678");
        assert!(
            matches!(
                store.verify_audit().await.expect("verify"),
                crate::store::audit::Verified::Intact(_)
            ),
            "the chain holds"
        );
        // Swept again: nothing more to do.
        assert_eq!(recordings.sweep(now).await.deleted, 0);
    }

    #[test]
    fn policy_picks_the_most_specific_setting() {
        let mut c = RecordingConfig {
            default: RecordPolicy::None,
            ..RecordingConfig::default()
        };
        c.policies.numbers.insert("1555".into(), RecordPolicy::All);
        c.policies
            .routes
            .insert("sales".into(), RecordPolicy::OnDemand);
        c.policies.queues.insert("vip".into(), RecordPolicy::None);
        assert_eq!(c.policy(Some("1555"), None, None, None), RecordPolicy::All);
        assert_eq!(
            c.policy(Some("1555"), Some("sales"), None, None),
            RecordPolicy::OnDemand
        );
        assert_eq!(
            c.policy(Some("1555"), Some("sales"), Some("vip"), None),
            RecordPolicy::None
        );
        assert_eq!(
            c.policy(Some("1666"), Some("other"), None, None),
            RecordPolicy::None
        );
    }
}
