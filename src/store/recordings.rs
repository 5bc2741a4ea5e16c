//! Recordings the switch keeps: its own (a recording policy's, one started on demand, an HTTP
//! app's) and Meta's (a call's recording or transcript). What each is, whose call it was
//! (for the authenticated download, `GET /v1/recordings/{id}`, and deletion), where its
//! bytes are and their digest, and when it was made (for the retention sweep).

use super::{Store, StoreError};

/// A recording as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// Its id.
    pub id: String,
    /// The call it was made on (the switch's id; Meta's call id when the switch has no CDR
    /// of it).
    pub call_id: String,
    /// The business number of that call (digits): who may fetch it.
    pub business_number: String,
    /// The app that asked for it (empty: none did).
    pub app: String,
    /// The local file, or the object's key in the bucket.
    pub path: String,
    /// Its size.
    pub bytes: i64,
    /// When it was finished, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Hex SHA-256 of its bytes.
    pub sha256: Option<String>,
    /// `local` or `s3`.
    pub storage: String,
    /// The media type it is served as.
    pub media_type: String,
    /// `switch` or `meta`.
    pub source: String,
    /// `audio` or `transcript`.
    pub kind: String,
    /// The customer's WhatsApp id.
    pub customer: Option<String>,
    /// The node whose disk holds it, while `storage` is `local`.
    pub node_id: Option<String>,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

fn from_row(r: Row) -> Recording {
    let (id, call_id, business_number, app, path, bytes, created_at_ms, sha256, storage) =
        (r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8);
    Recording {
        id,
        call_id,
        business_number,
        app,
        path,
        bytes,
        created_at_ms,
        sha256,
        storage,
        media_type: r.9,
        source: r.10,
        kind: r.11,
        customer: r.12,
        node_id: r.13,
    }
}

const COLUMNS: &str = "id, call_id, business_number, app, path, bytes, created_at_ms, sha256, \
                       storage, media_type, source, kind, customer, node_id";
const INSERT: &str = "INSERT INTO recordings \
                      (id, call_id, business_number, app, path, bytes, created_at_ms, sha256, \
                      storage, media_type, source, kind, customer, node_id) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                      ON CONFLICT (id) DO UPDATE SET path = excluded.path, bytes = excluded.bytes, \
                      created_at_ms = excluded.created_at_ms, sha256 = excluded.sha256, \
                      storage = excluded.storage, media_type = excluded.media_type, \
                      node_id = excluded.node_id";
const DELETE: &str = "DELETE FROM recordings WHERE id = $1";
const STORED: &str = "UPDATE recordings SET storage = $2, path = $3 WHERE id = $1";
const LINK_RECORDING: &str =
    "UPDATE cdrs SET meta_recording_id = $1 WHERE wa_call_id = $2 AND meta_recording_id IS NULL";
const LINK_TRANSCRIPT: &str =
    "UPDATE cdrs SET meta_transcript_id = $1 WHERE wa_call_id = $2 AND meta_transcript_id IS NULL";

macro_rules! on_pool {
    ($self:expr, |$p:ident| $body:expr) => {
        match $self {
            Store::Sqlite($p) => $body,
            Store::Postgres($p) => $body,
        }
    };
}

impl Store {
    /// Keeps `r` (replacing a recording of the same id).
    pub async fn put_recording(&self, r: &Recording) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(INSERT)
            .bind(&r.id)
            .bind(&r.call_id)
            .bind(&r.business_number)
            .bind(&r.app)
            .bind(&r.path)
            .bind(r.bytes)
            .bind(r.created_at_ms)
            .bind(&r.sha256)
            .bind(&r.storage)
            .bind(&r.media_type)
            .bind(&r.source)
            .bind(&r.kind)
            .bind(&r.customer)
            .bind(&r.node_id)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// The recording `id`, if kept.
    pub async fn recording(&self, id: &str) -> Result<Option<Recording>, StoreError> {
        let q = format!("SELECT {COLUMNS} FROM recordings WHERE id = $1");
        let row: Option<Row> = on_pool!(self, |p| sqlx::query_as(&q)
            .bind(id)
            .fetch_optional(p)
            .await?);
        Ok(row.map(from_row))
    }

    /// Recordings finished before `before_ms` that node `node` may remove (in a bucket, or
    /// on its own disk), oldest first from `(after_ms, after_id)`, at most `limit`.
    pub async fn recordings_before(
        &self,
        before_ms: i64,
        node: &str,
        after: (i64, &str),
        limit: i64,
    ) -> Result<Vec<Recording>, StoreError> {
        let q = format!(
            "SELECT {COLUMNS} FROM recordings WHERE created_at_ms < $1 \
             AND (storage <> 'local' OR node_id = $2 OR node_id IS NULL) \
             AND (created_at_ms > $3 OR (created_at_ms = $3 AND id > $4)) \
             ORDER BY created_at_ms, id LIMIT $5"
        );
        let rows: Vec<Row> = on_pool!(self, |p| sqlx::query_as(&q)
            .bind(before_ms)
            .bind(node)
            .bind(after.0)
            .bind(after.1)
            .bind(limit)
            .fetch_all(p)
            .await?);
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Recordings on node `node`'s own disk, oldest first, at most `limit`.
    pub async fn local_recordings(
        &self,
        node: &str,
        limit: i64,
    ) -> Result<Vec<Recording>, StoreError> {
        let q = format!(
            "SELECT {COLUMNS} FROM recordings WHERE storage = 'local' \
             AND (node_id = $1 OR node_id IS NULL) ORDER BY created_at_ms, id LIMIT $2"
        );
        let rows: Vec<Row> = on_pool!(self, |p| sqlx::query_as(&q)
            .bind(node)
            .bind(limit)
            .fetch_all(p)
            .await?);
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Notes that recording `id` is now kept in `storage` at `path`.
    pub async fn recording_stored(
        &self,
        id: &str,
        storage: &str,
        path: &str,
    ) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(STORED)
            .bind(id)
            .bind(storage)
            .bind(path)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Forgets the recording `id`; whether it was kept.
    pub async fn delete_recording(&self, id: &str) -> Result<bool, StoreError> {
        let done = on_pool!(self, |p| sqlx::query(DELETE)
            .bind(id)
            .execute(p)
            .await?
            .rows_affected());
        Ok(done > 0)
    }

    /// Links Meta's recording (`transcript`: its transcript) `id` to the CDR of Meta's call
    /// `wa_call_id`: whether a CDR took it.
    pub async fn link_meta_recording(
        &self,
        wa_call_id: &str,
        id: &str,
        transcript: bool,
    ) -> Result<bool, StoreError> {
        let q = if transcript {
            LINK_TRANSCRIPT
        } else {
            LINK_RECORDING
        };
        let done = on_pool!(self, |p| sqlx::query(q)
            .bind(id)
            .bind(wa_call_id)
            .execute(p)
            .await?
            .rows_affected());
        Ok(done > 0)
    }

    /// The switch's call id of Meta's call `wa_call_id`, if its CDR is written.
    pub async fn call_of_wa_call(&self, wa_call_id: &str) -> Result<Option<String>, StoreError> {
        let q = "SELECT call_id FROM cdrs WHERE wa_call_id = $1 ORDER BY ended_at DESC LIMIT 1";
        let row: Option<(String,)> = on_pool!(self, |p| sqlx::query_as(q)
            .bind(wa_call_id)
            .fetch_optional(p)
            .await?);
        Ok(row.map(|r| r.0))
    }

    /// Meta's recordings whose call had no CDR when they came (`call_id` is still Meta's
    /// call id), at most `limit`.
    /// (Meta keeps media a week: older ones are left alone.)
    pub async fn unlinked_meta_recordings(
        &self,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<Recording>, StoreError> {
        let q = format!(
            "SELECT {COLUMNS} FROM recordings WHERE source = 'meta' \
             AND NOT EXISTS (SELECT 1 FROM cdrs WHERE cdrs.call_id = recordings.call_id) \
             AND created_at_ms > $2 ORDER BY created_at_ms LIMIT $1"
        );
        let rows: Vec<Row> = on_pool!(self, |p| sqlx::query_as(&q)
            .bind(limit)
            .bind(since_ms)
            .fetch_all(p)
            .await?);
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Sets the call of recording `id` (Meta's recording, once its call's CDR is there).
    pub async fn recording_call(&self, id: &str, call_id: &str) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(
            "UPDATE recordings SET call_id = $2 WHERE id = $1"
        )
        .bind(id)
        .bind(call_id)
        .execute(p)
        .await
        .map(|_| ())?);
        Ok(())
    }
}
