//! Recordings made by HTTP apps' `record` verb: the file, and whose call it was, for the
//! authenticated download (`GET /v1/recordings/{id}`) and deletion.

use super::{Store, StoreError};

/// A recording as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// Its id (the file's name without extension).
    pub id: String,
    /// The call it was made on.
    pub call_id: String,
    /// The business number of that call (digits): who may fetch it.
    pub business_number: String,
    /// The app that asked for it.
    pub app: String,
    /// The file.
    pub path: String,
    /// Its size.
    pub bytes: i64,
    /// When it was finished, ms since the Unix epoch.
    pub created_at_ms: i64,
}

type Row = (String, String, String, String, String, i64, i64);

const SELECT: &str = "SELECT id, call_id, business_number, app, path, bytes, created_at_ms \
                      FROM recordings WHERE id = $1";
const INSERT: &str = "INSERT INTO recordings \
                      (id, call_id, business_number, app, path, bytes, created_at_ms) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7) \
                      ON CONFLICT (id) DO UPDATE SET path = excluded.path, bytes = excluded.bytes, \
                      created_at_ms = excluded.created_at_ms";
const DELETE: &str = "DELETE FROM recordings WHERE id = $1";

impl Store {
    /// Keeps `r` (replacing a recording of the same id).
    pub async fn put_recording(&self, r: &Recording) -> Result<(), StoreError> {
        macro_rules! put {
            ($pool:expr) => {
                sqlx::query(INSERT)
                    .bind(&r.id)
                    .bind(&r.call_id)
                    .bind(&r.business_number)
                    .bind(&r.app)
                    .bind(&r.path)
                    .bind(r.bytes)
                    .bind(r.created_at_ms)
                    .execute($pool)
                    .await
                    .map(|_| ())?
            };
        }
        match self {
            Store::Sqlite(p) => put!(p),
            Store::Postgres(p) => put!(p),
        };
        Ok(())
    }

    /// The recording `id`, if kept.
    pub async fn recording(&self, id: &str) -> Result<Option<Recording>, StoreError> {
        let row: Option<Row> = match self {
            Store::Sqlite(p) => sqlx::query_as(SELECT).bind(id).fetch_optional(p).await?,
            Store::Postgres(p) => sqlx::query_as(SELECT).bind(id).fetch_optional(p).await?,
        };
        Ok(row.map(
            |(id, call_id, business_number, app, path, bytes, created_at_ms)| Recording {
                id,
                call_id,
                business_number,
                app,
                path,
                bytes,
                created_at_ms,
            },
        ))
    }

    /// Forgets the recording `id`; whether it was kept.
    pub async fn delete_recording(&self, id: &str) -> Result<bool, StoreError> {
        let done = match self {
            Store::Sqlite(p) => sqlx::query(DELETE)
                .bind(id)
                .execute(p)
                .await?
                .rows_affected(),
            Store::Postgres(p) => sqlx::query(DELETE)
                .bind(id)
                .execute(p)
                .await?
                .rows_affected(),
        };
        Ok(done > 0)
    }
}
