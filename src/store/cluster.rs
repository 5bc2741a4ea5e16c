//! A cluster's shared registers: its nodes (heartbeats, and the URL each is reached at) and
//! which node owns which call (leases, by the switch's call id and by Meta's).

use super::{Store, StoreError};

/// A call's owner as the register names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The key asked for (`call:<id>` or `wa:<wacid>`).
    pub key: String,
    /// The owning node.
    pub node_id: String,
    /// Where it is reached.
    pub url: String,
}

/// A call of a lost node, as the register kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostCall {
    /// The switch's call id.
    pub call_id: String,
    /// What its CDR starts from (JSON), when the register has it.
    pub detail: Option<String>,
    /// When it was answered (epoch ms).
    pub answered_at: Option<i64>,
    /// Meta's ids of it.
    pub wa_call_ids: Vec<String>,
}

/// The register key of the switch's call `id`.
pub fn call_key(id: &str) -> String {
    format!("call:{id}")
}

/// The register key of Meta's call id `wa_call_id`.
pub fn wa_key(wa_call_id: &str) -> String {
    format!("wa:{wa_call_id}")
}

const HEARTBEAT: &str = "INSERT INTO cluster_nodes (node_id, url, heartbeat_at, state) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (node_id) DO UPDATE SET \
                         url = excluded.url, heartbeat_at = excluded.heartbeat_at, \
                         state = excluded.state";
/// The heartbeat of a node that is not taken for lost: no row when it was.
const BEAT_UNLESS_LOST: &str = "INSERT INTO cluster_nodes (node_id, url, heartbeat_at, state) \
                                VALUES ($1, $2, $3, $4) ON CONFLICT (node_id) DO UPDATE SET \
                                url = excluded.url, heartbeat_at = excluded.heartbeat_at, \
                                state = excluded.state WHERE cluster_nodes.state <> 'lost' \
                                RETURNING node_id";
const CLOCK_PG: &str = "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";
const CLOCK_SQLITE: &str = "SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
const CLAIM: &str = "INSERT INTO call_owners (key, node_id, call_id, lease_until, detail) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO UPDATE SET \
                     node_id = excluded.node_id, call_id = excluded.call_id, \
                     lease_until = excluded.lease_until, detail = excluded.detail";
const ANSWERED: &str = "UPDATE call_owners SET answered_at = $2 WHERE key = $1";
const STALE: &str = "SELECT node_id FROM cluster_nodes WHERE state IN ('up', 'draining') \
                     AND heartbeat_at < $1 AND node_id <> $2";
const TAKE_OVER: &str = "UPDATE cluster_nodes SET state = 'lost' WHERE node_id = $1 \
                         AND state <> 'lost' AND heartbeat_at < $2";
const LOST_CALLS: &str = "SELECT key, call_id, detail, answered_at FROM call_owners \
                          WHERE node_id = $1";
const FORGET: &str = "DELETE FROM call_owners WHERE node_id = $1";
const RELEASE: &str = "DELETE FROM call_owners WHERE key = $1 AND node_id = $2";
const RENEW: &str = "UPDATE call_owners SET lease_until = $2 WHERE node_id = $1";
const OWNER: &str = "SELECT o.key, o.node_id, n.url FROM call_owners o \
                     JOIN cluster_nodes n ON n.node_id = o.node_id \
                     WHERE o.key = $1 AND o.lease_until > $2 AND n.heartbeat_at > $3 \
                     AND n.state IN ('up', 'draining')";
const PEERS: &str = "SELECT COUNT(*) FROM cluster_nodes WHERE node_id <> $1 \
                     AND state IN ('up', 'draining') AND heartbeat_at > $2";
const LEAVE: &str = "UPDATE cluster_nodes SET state = 'left' WHERE node_id = $1";

impl Store {
    /// Node `node_id` is alive at `now` (epoch ms), reached at `url`, in `state` (`up`, or
    /// `draining`: it takes no new calls, and what is forwarded to it still reaches its
    /// calls).
    pub async fn heartbeat(
        &self,
        node_id: &str,
        url: &str,
        state: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(HEARTBEAT)
            .bind(node_id)
            .bind(url)
            .bind(now)
            .bind(state)
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// [`Store::heartbeat`], unless a survivor has taken node `node_id` for lost: then
    /// nothing is written and the answer is false.
    pub async fn heartbeat_unless_lost(
        &self,
        node_id: &str,
        url: &str,
        state: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let row: Option<(String,)> = on_pool!(self, |p| sqlx::query_as(BEAT_UNLESS_LOST)
            .bind(node_id)
            .bind(url)
            .bind(now)
            .bind(state)
            .fetch_optional(p)
            .await)?;
        Ok(row.is_some())
    }

    /// The database's clock (epoch ms): the one time every node of a cluster compares
    /// heartbeats and leases by.
    pub async fn clock_ms(&self) -> Result<i64, StoreError> {
        let (t,): (i64,) = match self {
            Store::Sqlite(p) => sqlx::query_as(CLOCK_SQLITE).fetch_one(p).await?,
            Store::Postgres(p) => sqlx::query_as(CLOCK_PG).fetch_one(p).await?,
        };
        Ok(t)
    }

    /// Node `node_id` owns call `call_id` by `keys` until `lease_until` (epoch ms);
    /// `detail` (on the call's own key) is what its CDR would start from.
    pub async fn claim_calls(
        &self,
        keys: &[String],
        node_id: &str,
        call_id: &str,
        lease_until: i64,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        for key in keys {
            let detail = detail.filter(|_| key.starts_with("call:"));
            on_pool!(self, |p| sqlx::query(CLAIM)
                .bind(key)
                .bind(node_id)
                .bind(call_id)
                .bind(lease_until)
                .bind(detail)
                .execute(p)
                .await
                .map(drop))?;
        }
        Ok(())
    }

    /// The call of `key` was answered at `at` (epoch ms).
    pub async fn call_answered(&self, key: &str, at: i64) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(ANSWERED)
            .bind(key)
            .bind(at)
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// Nodes other than `me` not heard from since `before` (epoch ms) and not yet taken
    /// over.
    pub async fn stale_nodes(&self, me: &str, before: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = on_pool!(self, |p| sqlx::query_as(STALE)
            .bind(before)
            .bind(me)
            .fetch_all(p)
            .await)?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    /// Marks node `node_id` lost if it is still silent since `before`: true for exactly one
    /// caller, who then closes its calls out.
    pub async fn take_over(&self, node_id: &str, before: i64) -> Result<bool, StoreError> {
        let done = on_pool!(self, |p| sqlx::query(TAKE_OVER)
            .bind(node_id)
            .bind(before)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }

    /// The calls node `node_id` owned: each call id with what its CDR starts from, when it
    /// was answered, and Meta's ids of it.
    pub async fn lost_calls(&self, node_id: &str) -> Result<Vec<LostCall>, StoreError> {
        let rows: Vec<(String, String, Option<String>, Option<i64>)> =
            on_pool!(self, |p| sqlx::query_as(LOST_CALLS)
                .bind(node_id)
                .fetch_all(p)
                .await)?;
        let mut calls: Vec<LostCall> = Vec::new();
        for (key, call_id, detail, answered_at) in rows {
            let i = match calls.iter().position(|c| c.call_id == call_id) {
                Some(i) => i,
                None => {
                    calls.push(LostCall {
                        call_id: call_id.clone(),
                        detail: None,
                        answered_at: None,
                        wa_call_ids: Vec::new(),
                    });
                    calls.len() - 1
                }
            };
            let call = &mut calls[i];
            match key.strip_prefix("wa:") {
                Some(wa) => call.wa_call_ids.push(wa.to_string()),
                None => {
                    call.detail = detail;
                    call.answered_at = answered_at;
                }
            }
        }
        Ok(calls)
    }

    /// The URL node `node_id` was heard from at since `since` (epoch ms), if it was.
    pub async fn node_heard(
        &self,
        node_id: &str,
        since: i64,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = on_pool!(self, |p| sqlx::query_as(
            "SELECT url FROM cluster_nodes WHERE node_id = $1 AND heartbeat_at > $2 \
             AND state IN ('up', 'draining')"
        )
        .bind(node_id)
        .bind(since)
        .fetch_optional(p)
        .await)?;
        Ok(row.map(|(url,)| url))
    }

    /// How many other nodes were heard from since `since` (epoch ms).
    pub async fn live_peers(&self, me: &str, since: i64) -> Result<i64, StoreError> {
        let (n,): (i64,) = on_pool!(self, |p| sqlx::query_as(PEERS)
            .bind(me)
            .bind(since)
            .fetch_one(p)
            .await)?;
        Ok(n)
    }

    /// Node `node_id` left the cluster in good order (nothing to close out).
    pub async fn leave_cluster(&self, node_id: &str) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(LEAVE)
            .bind(node_id)
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// Forgets every call node `node_id` owned.
    pub async fn forget_calls(&self, node_id: &str) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(FORGET)
            .bind(node_id)
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// Node `node_id` no longer owns the calls of `keys`.
    pub async fn release_calls(&self, keys: &[String], node_id: &str) -> Result<(), StoreError> {
        for key in keys {
            on_pool!(self, |p| sqlx::query(RELEASE)
                .bind(key)
                .bind(node_id)
                .execute(p)
                .await
                .map(drop))?;
        }
        Ok(())
    }

    /// Every call node `node_id` owns is owned until `lease_until`.
    pub async fn renew_calls(&self, node_id: &str, lease_until: i64) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(RENEW)
            .bind(node_id)
            .bind(lease_until)
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// The live owner of `key` at `now`: its lease current, and its node heard from within
    /// `alive_ms`.
    pub async fn call_owner(
        &self,
        key: &str,
        now: i64,
        alive_ms: i64,
    ) -> Result<Option<Owner>, StoreError> {
        let row: Option<(String, String, String)> = on_pool!(self, |p| sqlx::query_as(OWNER)
            .bind(key)
            .bind(now)
            .bind(now - alive_ms)
            .fetch_optional(p)
            .await)?;
        Ok(row.map(|(key, node_id, url)| Owner { key, node_id, url }))
    }
}
