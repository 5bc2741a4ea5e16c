//! Agents kept in the store (added through `PUT /v1/agents/{user}`): their digest secrets
//! (HA1 for MD5 and SHA-256, never the password), display name and queues.

use super::{Store, StoreError};

/// An agent as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAgent {
    /// The SIP user.
    pub user: String,
    /// HA1 (`user:realm:password`) hashed with MD5.
    pub ha1_md5: String,
    /// The same with SHA-256.
    pub ha1_sha256: String,
    /// The name callers' cards show.
    pub display_name: Option<String>,
    /// The queues the agent answers.
    pub queues: Vec<String>,
}

type Row = (String, String, String, Option<String>, String);

fn from_row((user, ha1_md5, ha1_sha256, display_name, queues): Row) -> StoredAgent {
    StoredAgent {
        user,
        ha1_md5,
        ha1_sha256,
        display_name,
        queues: serde_json::from_str(&queues).unwrap_or_default(),
    }
}

const SELECT: &str =
    "SELECT user_name, ha1_md5, ha1_sha256, display_name, queues FROM agents ORDER BY user_name";
const UPSERT: &str =
    "INSERT INTO agents (user_name, ha1_md5, ha1_sha256, display_name, queues, updated_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (user_name) DO UPDATE SET ha1_md5 = excluded.ha1_md5, \
     ha1_sha256 = excluded.ha1_sha256, display_name = excluded.display_name, \
     queues = excluded.queues, updated_at_ms = excluded.updated_at_ms";
const EXISTS: &str = "SELECT COUNT(*) FROM agents WHERE user_name = $1";
const DELETE: &str = "DELETE FROM agents WHERE user_name = $1";

impl Store {
    /// Every stored agent, by user.
    pub async fn agents(&self) -> Result<Vec<StoredAgent>, StoreError> {
        let rows: Vec<Row> = match self {
            Store::Sqlite(p) => sqlx::query_as(SELECT).fetch_all(p).await?,
            Store::Postgres(p) => sqlx::query_as(SELECT).fetch_all(p).await?,
        };
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Adds or replaces `agent`; true when it is new.
    pub async fn put_agent(&self, agent: &StoredAgent, now_ms: i64) -> Result<bool, StoreError> {
        let queues = serde_json::to_string(&agent.queues).unwrap_or_else(|_| "[]".into());
        // One transaction: whether the agent existed, and the agent written.
        macro_rules! put {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                let (n,): (i64,) = sqlx::query_as(EXISTS)
                    .bind(&agent.user)
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query(UPSERT)
                    .bind(&agent.user)
                    .bind(&agent.ha1_md5)
                    .bind(&agent.ha1_sha256)
                    .bind(&agent.display_name)
                    .bind(&queues)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                n
            }};
        }
        let existed: i64 = match self {
            Store::Sqlite(p) => put!(p),
            Store::Postgres(p) => put!(p),
        };
        Ok(existed == 0)
    }

    /// Removes agent `user`; true when there was one.
    pub async fn delete_agent(&self, user: &str) -> Result<bool, StoreError> {
        let rows = match self {
            Store::Sqlite(p) => sqlx::query(DELETE)
                .bind(user)
                .execute(p)
                .await?
                .rows_affected(),
            Store::Postgres(p) => sqlx::query(DELETE)
                .bind(user)
                .execute(p)
                .await?
                .rows_affected(),
        };
        Ok(rows > 0)
    }
}
