//! The system of record: SQLite (embedded, the default) or PostgreSQL (clusters), behind one
//! repository trait per aggregate.
//!
//! `store` owns connections, embedded migrations and SQL. It knows nothing of calls or actors
//! except [`writer`], the supervised service that batches CDR writes off the call path.

/// `$body` run with `$p` the pool of either backend: the same SQL, one match.
macro_rules! on_pool {
    ($store:expr, |$p:ident| $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($p) => $body,
            $crate::store::Store::Postgres($p) => $body,
        }
    };
}

pub mod agents;
pub mod audit;
pub mod blobs;
pub(crate) mod cdr;
pub mod cluster;
pub mod recordings;
pub mod webhook;
pub mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::{StoreConfig, StoreUrl};

pub use cdr::{
    CallOutcome, Cdr, CdrFilter, CdrRecording, CdrRepository, ControlRecord, Direction,
    HangupParty, MediaQuality, StreamRecord,
};
pub use recordings::Recording;

/// Migrations compiled into the binary and applied at start, on either backend.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long to wait for a database connection before reporting the store unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Store failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened or reached (wrong URL, server down, permissions).
    #[error("cannot open {url}: {source}")]
    Open {
        /// The store URL (without password).
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration failed (a database written by a newer waswitch, or edited by hand).
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed (connection lost, constraint, disk full).
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored value could not be read back (a row edited by hand).
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// A connection pool to the configured database.
#[derive(Debug, Clone)]
pub enum Store {
    /// Embedded SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

impl Store {
    /// Connects to the configured database and applies pending migrations.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            url: config.url.to_string(),
            source,
        };
        match &config.url {
            StoreUrl::Sqlite(path) => {
                let memory = path == ":memory:";
                let mut options = SqliteConnectOptions::new()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(ACQUIRE_TIMEOUT)
                    .foreign_keys(true);
                if memory {
                    options = options.in_memory(true);
                } else {
                    if let Some(dir) = Path::new(path).parent() {
                        if !dir.as_os_str().is_empty() {
                            std::fs::create_dir_all(dir)
                                .map_err(|e| open_err(sqlx::Error::Io(e)))?;
                        }
                    }
                    options = options.filename(path);
                }
                // An in-memory database lives only as long as its one connection.
                let max = if memory { 1 } else { config.max_connections };
                let pool = SqlitePoolOptions::new()
                    .max_connections(max)
                    .min_connections(u32::from(memory))
                    .idle_timeout(if memory {
                        None
                    } else {
                        Some(Duration::from_secs(600))
                    })
                    .max_lifetime(if memory {
                        None
                    } else {
                        Some(Duration::from_secs(1800))
                    })
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    // An embedded database's connection cannot drop: no ping before each use.
                    .test_before_acquire(false)
                    .connect_with(options)
                    .await
                    .map_err(open_err)?;
                let store = Store::Sqlite(pool);
                store.migrate().await?;
                Ok(store)
            }
            StoreUrl::Postgres(url) => {
                let options = PgConnectOptions::from_str(url).map_err(open_err)?;
                Self::open_postgres(options, config.max_connections)
                    .await
                    .map_err(|e| match e {
                        StoreError::Open { source, .. } => open_err(source),
                        other => other,
                    })
            }
        }
    }

    /// Connects to PostgreSQL with explicit options (for a schema per tenant or per test)
    /// and applies pending migrations.
    pub async fn open_postgres(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                url: "postgres".to_string(),
                source,
            })?;
        let store = Store::Postgres(pool);
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(p) => MIGRATOR.run(p).await?,
            Store::Postgres(p) => MIGRATOR.run(p).await?,
        }
        let indexed = self.index_audit_customers().await?;
        if indexed > 0 {
            tracing::info!(
                records = indexed,
                "audit records indexed by their customer's E.164 number"
            );
        }
        Ok(())
    }

    /// Checks that the database answers, within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), String> {
        let query = async {
            match self {
                Store::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
                Store::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            }
        };
        match tokio::time::timeout(timeout, query).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }

    /// Closes every connection (waits for queries in flight).
    pub async fn close(&self) {
        match self {
            Store::Sqlite(p) => p.close().await,
            Store::Postgres(p) => p.close().await,
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}
