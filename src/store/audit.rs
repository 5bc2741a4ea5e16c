//! The audit trail in the database: appended one record at a time under the lock of its
//! head row (so the chain has one writer at a time, across nodes too), read back by pair
//! and time, and walked from the start by `waswitch audit verify`.
//!
//! Each row also carries `customer`, its `wa_id` as E.164 digits: the key a customer's
//! records are found by, however older records spelled the number. It is derived, outside
//! the hash, and [`Store::index_audit_customers`] fills it in for rows written before it
//! existed.

use std::ops::ControlFlow;

use sqlx::QueryBuilder;

use super::{Store, StoreError};
use crate::audit::Actor;
use crate::audit::{AuditEntry, AuditRecord, Broken, Verifier};

/// Which records to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// One business number.
    pub business_number: Option<String>,
    /// One customer (E.164 digits: matched against each record's normalised customer).
    pub wa_id: Option<String>,
    /// From this time (epoch ms, inclusive).
    pub since: Option<i64>,
    /// Until this time (epoch ms, exclusive).
    pub until: Option<i64>,
    /// Only records after this position (paging).
    pub after_seq: Option<i64>,
    /// At most this many (0: 1000; capped at 10 000).
    pub limit: u32,
}

/// The outcome of walking the whole trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Every record is in place: how many.
    Intact(u64),
    /// The first problem found.
    Broken(Broken),
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    at: i64,
    business_number: String,
    wa_id: String,
    kind: String,
    actor: String,
    detail: String,
    prev_hash: String,
    hash: String,
}

fn actor_from(s: &str) -> Result<Actor, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| StoreError::Corrupt(format!("audit record with unknown actor {s:?}")))
}

fn actor_str(a: Actor) -> &'static str {
    match a {
        Actor::Customer => "customer",
        Actor::Business => "business",
        Actor::Meta => "meta",
        Actor::Switch => "switch",
    }
}

impl TryFrom<Row> for AuditRecord {
    type Error = StoreError;
    fn try_from(r: Row) -> Result<Self, StoreError> {
        Ok(AuditRecord {
            seq: r.seq,
            entry: AuditEntry {
                at: r.at,
                business_number: r.business_number,
                wa_id: r.wa_id,
                kind: r.kind,
                actor: actor_from(&r.actor)?,
                detail: r.detail,
            },
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
    }
}

const COLUMNS: &str = "seq, at, business_number, wa_id, kind, actor, detail, prev_hash, hash";

macro_rules! audit_queries {
    ($db:ty) => {
        use super::*;

        pub(super) async fn append(
            pool: &sqlx::Pool<$db>,
            entries: &[AuditEntry],
        ) -> Result<Vec<AuditRecord>, StoreError> {
            let mut tx = pool.begin().await?;
            let out = append_in(&mut tx, entries).await?;
            tx.commit().await?;
            Ok(out)
        }

        /// Appends `entries` inside `tx` (committed with it).
        pub(super) async fn append_in(
            tx: &mut sqlx::Transaction<'_, $db>,
            entries: &[AuditEntry],
        ) -> Result<Vec<AuditRecord>, StoreError> {
            // Writing the head first takes its lock at once (a row lock on PostgreSQL, the
            // write lock on SQLite): appends queue here instead of racing for a position.
            let n = i64::try_from(entries.len()).unwrap_or(i64::MAX);
            let (last, mut hash): (i64, String) = sqlx::query_as(
                "UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq - $1, hash",
            )
            .bind(n)
            .fetch_one(&mut **tx)
            .await?;
            let mut out = Vec::with_capacity(entries.len());
            let mut seq = last;
            for entry in entries {
                let record = AuditRecord::next(Some((seq, &hash)), entry.clone());
                let mut q = QueryBuilder::<$db>::new(format!(
                    "INSERT INTO audit_records ({COLUMNS}, customer) VALUES ("
                ));
                let mut v = q.separated(", ");
                v.push_bind(record.seq)
                    .push_bind(record.entry.at)
                    .push_bind(record.entry.business_number.clone())
                    .push_bind(record.entry.wa_id.clone())
                    .push_bind(record.entry.kind.clone())
                    .push_bind(actor_str(record.entry.actor))
                    .push_bind(record.entry.detail.clone())
                    .push_bind(record.prev_hash.clone())
                    .push_bind(record.hash.clone())
                    .push_bind(crate::number::e164_or_raw(&record.entry.wa_id));
                q.push(")");
                q.build().execute(&mut **tx).await?;
                seq = record.seq;
                hash = record.hash.clone();
                out.push(record);
            }
            sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
                .bind(hash)
                .execute(&mut **tx)
                .await?;
            Ok(out)
        }

        pub(super) async fn list<'e, E>(
            exec: E,
            f: &AuditFilter,
        ) -> Result<Vec<AuditRecord>, StoreError>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            let mut q = QueryBuilder::<$db>::new(format!(
                "SELECT {COLUMNS} FROM audit_records WHERE 1 = 1"
            ));
            if let Some(b) = &f.business_number {
                q.push(" AND business_number = ").push_bind(b.clone());
            }
            if let Some(w) = &f.wa_id {
                q.push(" AND customer = ").push_bind(w.clone());
            }
            if let Some(t) = f.since {
                q.push(" AND at >= ").push_bind(t);
            }
            if let Some(t) = f.until {
                q.push(" AND at < ").push_bind(t);
            }
            if let Some(s) = f.after_seq {
                q.push(" AND seq > ").push_bind(s);
            }
            let limit = if f.limit == 0 {
                1000
            } else {
                f.limit.min(10_000)
            };
            q.push(" ORDER BY seq LIMIT ").push_bind(i64::from(limit));
            let rows: Vec<Row> = q.build_query_as().fetch_all(exec).await?;
            rows.into_iter().map(AuditRecord::try_from).collect()
        }

        pub(super) async fn index_customers(pool: &sqlx::Pool<$db>) -> Result<u64, StoreError> {
            let mut done = 0;
            let mut after = 0i64;
            loop {
                let rows: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT seq, wa_id FROM audit_records WHERE customer IS NULL AND seq > $1 \
                     ORDER BY seq LIMIT 1000",
                )
                .bind(after)
                .fetch_all(pool)
                .await?;
                let Some(last) = rows.last().map(|(seq, _)| *seq) else {
                    return Ok(done);
                };
                after = last;
                let mut tx = pool.begin().await?;
                for (seq, wa_id) in &rows {
                    sqlx::query("UPDATE audit_records SET customer = $1 WHERE seq = $2")
                        .bind(crate::number::e164_or_raw(wa_id))
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                done += rows.len() as u64;
            }
        }

        pub(super) async fn head(pool: &sqlx::Pool<$db>) -> Result<(i64, String), StoreError> {
            Ok(
                sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                    .fetch_one(pool)
                    .await?,
            )
        }
    };
}

mod sqlite {
    audit_queries!(sqlx::Sqlite);
}

mod postgres {
    audit_queries!(sqlx::Postgres);
}

/// The audit trail's storage.
pub trait AuditRepository {
    /// Appends `entries` in order, in one transaction; the records as written. Returns
    /// only once they are committed.
    fn append_audit(
        &self,
        entries: &[AuditEntry],
    ) -> impl std::future::Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;
    /// Records matching `filter`, in trail order.
    fn audit_records(
        &self,
        filter: &AuditFilter,
    ) -> impl std::future::Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;
    /// The last record written: its position and hash.
    fn audit_head(
        &self,
    ) -> impl std::future::Future<Output = Result<(i64, String), StoreError>> + Send;
}

impl AuditRepository for Store {
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<Vec<AuditRecord>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Sqlite(p) => sqlite::append(p, entries).await,
            Store::Postgres(p) => postgres::append(p, entries).await,
        }
    }

    async fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::list(p, filter).await,
            Store::Postgres(p) => postgres::list(p, filter).await,
        }
    }

    async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::head(p).await,
            Store::Postgres(p) => postgres::head(p).await,
        }
    }
}

/// The channel a cluster's nodes hear of each other's audit records on (PostgreSQL
/// `LISTEN/NOTIFY`): the payload is the last position written.
pub const AUDIT_CHANNEL: &str = "waswitch_audit";

/// One (business number, customer) pair held across every node of a cluster: a PostgreSQL
/// transaction holding an advisory lock keyed by the pair. What the holder reads of the
/// pair's records is all there is (no other node writes to the pair meanwhile), and what it
/// appends is committed together, then announced on [`AUDIT_CHANNEL`]. Dropped without
/// [`commit`](Self::commit), nothing it appended stays and the lock is released; a node that
/// dies releases it with its connection.
pub struct PairLock {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// The last position appended.
    written: Option<i64>,
}

impl std::fmt::Debug for PairLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairLock")
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl PairLock {
    /// The pair's records after position `after`, in trail order.
    pub async fn records_after(
        &mut self,
        business_number: &str,
        customer: &str,
        after: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        all_pages!(pair_filter(business_number, customer, after), |f| {
            postgres::list(&mut *self.tx, f)
        })
    }

    /// Appends `entries` in order, in the lock's transaction.
    pub async fn append(&mut self, entries: &[AuditEntry]) -> Result<Vec<AuditRecord>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let out = postgres::append_in(&mut self.tx, entries).await?;
        self.written = out.last().map(|r| r.seq).or(self.written);
        Ok(out)
    }

    /// Commits what was appended (announcing it to the other nodes) and releases the pair.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if let Some(seq) = self.written {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(AUDIT_CHANNEL)
                .bind(seq.to_string())
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// Every record `filter` matches past its `after_seq`, a page (`filter.limit`) at a time;
/// `$page` reads one page for a filter.
macro_rules! all_pages {
    ($filter:expr, |$f:ident| $page:expr) => {{
        let mut out = Vec::new();
        let mut filter = $filter;
        loop {
            let $f = &filter;
            let page = $page.await?;
            let Some(last) = page.last().map(|r| r.seq) else {
                return Ok(out);
            };
            filter.after_seq = Some(last);
            out.extend(page);
        }
    }};
}
use all_pages;

fn pair_filter(business_number: &str, customer: &str, after: i64) -> AuditFilter {
    AuditFilter {
        business_number: Some(business_number.to_string()),
        wa_id: Some(customer.to_string()),
        after_seq: Some(after),
        limit: 10_000,
        ..AuditFilter::default()
    }
}

/// How long a decision waits for a pair another node holds.
const PAIR_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '30s'";

impl Store {
    /// Takes pair (`business_number`, `customer`) across the cluster ([`PairLock`]);
    /// `None` on SQLite, a single node's store, where the permission service's own lock is
    /// the pair's.
    pub async fn lock_pair(
        &self,
        business_number: &str,
        customer: &str,
    ) -> Result<Option<PairLock>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(p) => {
                let mut tx = p.begin().await?;
                // A pair held past this (a node's Graph request retried to its end takes
                // less) fails the waiting decision with an error rather than hang it.
                sqlx::query(PAIR_LOCK_TIMEOUT).execute(&mut *tx).await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(format!("waswitch pair {business_number} {customer}"))
                    .execute(&mut *tx)
                    .await?;
                Ok(Some(PairLock { tx, written: None }))
            }
        }
    }

    /// The pair's records after position `after`, in trail order, read without its lock (a
    /// node catching up on what others wrote).
    pub async fn pair_records_after(
        &self,
        business_number: &str,
        customer: &str,
        after: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        all_pages!(pair_filter(business_number, customer, after), |f| self
            .audit_records(f))
    }
}

impl Store {
    /// The records of `kind` since `since` (epoch ms) that name node `node` (a survivor
    /// settles a lost node's call attempts from its reservations).
    pub async fn records_of_node(
        &self,
        kind: &str,
        node: &str,
        since: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_records WHERE kind = $3 AND at >= $1 \
             AND detail LIKE $2 ORDER BY seq"
        );
        let pattern = format!("%\"node\":{}%", serde_json::Value::from(node));
        let rows: Vec<Row> = on_pool!(self, |p| sqlx::query_as(&sql)
            .bind(since)
            .bind(&pattern)
            .bind(kind)
            .fetch_all(p)
            .await)?;
        rows.into_iter().map(AuditRecord::try_from).collect()
    }
}

/// Records read per page when a trail is walked.
const WALK_PAGE: u32 = 5000;

impl Store {
    /// Fills in the normalised customer of every record written without one (before the
    /// column existed): the number of records indexed. Run at start, after migrations;
    /// the records themselves, and so the chain, are untouched.
    pub async fn index_audit_customers(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::index_customers(p).await,
            Store::Postgres(p) => postgres::index_customers(p).await,
        }
    }

    /// Visits the records matching `filter` in trail order, a page at a time, until `f`
    /// breaks (`filter.after_seq` and `filter.limit` are the walk's own). The number
    /// visited.
    pub async fn walk_audit(
        &self,
        filter: &AuditFilter,
        mut f: impl FnMut(&AuditRecord) -> ControlFlow<()>,
    ) -> Result<u64, StoreError> {
        let mut page_filter = AuditFilter {
            after_seq: Some(0),
            limit: WALK_PAGE,
            ..filter.clone()
        };
        let mut visited = 0;
        loop {
            let page = self.audit_records(&page_filter).await?;
            let Some(last) = page.last().map(|r| r.seq) else {
                return Ok(visited);
            };
            for r in &page {
                visited += 1;
                if f(r).is_break() {
                    return Ok(visited);
                }
            }
            page_filter.after_seq = Some(last);
        }
    }

    /// Walks the whole audit trail from its first record and checks every link, then the
    /// end against the recorded head.
    pub async fn verify_audit(&self) -> Result<Verified, StoreError> {
        // The head is read first: records appended during the walk lie beyond it.
        let (head_seq, head_hash) = self.audit_head().await?;
        let mut verifier = Verifier::new();
        let mut broken = None;
        self.walk_audit(&AuditFilter::default(), |r| {
            if r.seq > head_seq {
                return ControlFlow::Break(());
            }
            match verifier.check(r) {
                Ok(()) => ControlFlow::Continue(()),
                Err(b) => {
                    broken = Some(b);
                    ControlFlow::Break(())
                }
            }
        })
        .await?;
        if let Some(b) = broken {
            return Ok(Verified::Broken(b));
        }
        Ok(match verifier.finish(head_seq, &head_hash) {
            Ok(n) => Verified::Intact(n),
            Err(broken) => Verified::Broken(broken),
        })
    }
}
