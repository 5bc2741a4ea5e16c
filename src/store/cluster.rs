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
const CLAIM: &str = "INSERT INTO call_owners (key, node_id, lease_until) VALUES ($1, $2, $3) \
                     ON CONFLICT (key) DO UPDATE SET node_id = excluded.node_id, \
                     lease_until = excluded.lease_until";
const RELEASE: &str = "DELETE FROM call_owners WHERE key = $1 AND node_id = $2";
const RENEW: &str = "UPDATE call_owners SET lease_until = $2 WHERE node_id = $1";
const OWNER: &str = "SELECT o.key, o.node_id, n.url FROM call_owners o \
                     JOIN cluster_nodes n ON n.node_id = o.node_id \
                     WHERE o.key = $1 AND o.lease_until > $2 AND n.heartbeat_at > $3 \
                     AND n.state = 'up'";

macro_rules! on_pool {
    ($store:expr, |$p:ident| $body:expr) => {
        match $store {
            Store::Sqlite($p) => $body,
            Store::Postgres($p) => $body,
        }
    };
}

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

    /// Node `node_id` owns the calls of `keys` until `lease_until` (epoch ms).
    pub async fn claim_calls(
        &self,
        keys: &[String],
        node_id: &str,
        lease_until: i64,
    ) -> Result<(), StoreError> {
        for key in keys {
            on_pool!(self, |p| sqlx::query(CLAIM)
                .bind(key)
                .bind(node_id)
                .bind(lease_until)
                .execute(p)
                .await
                .map(drop))?;
        }
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
