//! A PostgreSQL schema per test, on the server `WASWITCH_TEST_PG_URL` names (default
//! `postgres://postgres@127.0.0.1:5432/test`; `.ci/run` starts one when none is running).

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;
use waswitch::store::Store;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn pg_url() -> String {
    std::env::var("WASWITCH_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_string())
}

/// A PostgreSQL schema that exists for one test.
pub struct PgSchema {
    pub name: String,
    admin: sqlx::PgConnection,
}

impl PgSchema {
    pub async fn create() -> Self {
        let url = pg_url();
        let mut admin = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {url} is required for the repository tests ({e}); \
                 run .ci/run or set WASWITCH_TEST_PG_URL"
            )
        });
        let name = format!("waswitch_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut admin)
            .await
            .expect("create schema");
        Self { name, admin }
    }

    pub async fn open(&self) -> Store {
        let options = PgConnectOptions::from_str(&pg_url())
            .expect("PostgreSQL URL")
            .options([("search_path", self.name.as_str())]);
        Store::open_postgres(options, 4)
            .await
            .expect("open PostgreSQL store")
    }

    pub async fn drop(mut self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&mut self.admin)
            .await
            .expect("drop schema");
    }
}

impl PgSchema {
    /// The store URL of the schema, as a node's config names it.
    pub fn url(&self) -> String {
        let base = pg_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-c%20search_path%3D{}", self.name)
    }
}
