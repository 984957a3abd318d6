//! The database: one pool shared by apalis and Conductor's own tables, on SQLite (embedded
//! default) or Postgres (production).
//!
//! Queries are written once and compiled for both backends through [`with_conn!`] and
//! [`with_pool!`]: the macro expands the same body for each driver, so the SQL text (which
//! uses `$N` placeholders, understood by both) is never duplicated. Where the dialects truly
//! differ (advisory locks, `BEGIN IMMEDIATE`, views) the code says so at that spot.

use std::{str::FromStr, time::Duration};

use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    PgPool, Postgres, Sqlite, SqlitePool,
};

use crate::error::Error;

/// Conductor's migration history table (apalis keeps its own; on SQLite both would otherwise
/// share `_sqlx_migrations` and break each other).
const MIGRATIONS_TABLE: &str = "conductor_migrations";

/// A connection pool to one of the two supported backends.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A transaction on either backend. Dropping it without [`Tx::commit`] rolls it back.
#[derive(Debug)]
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// Runs `$body` with `$c` bound to the transaction's connection, once per backend.
#[macro_export]
macro_rules! with_conn {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx {
            $crate::db::Tx::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::db::Tx::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

/// Runs `$body` with `$p` bound to the pool, once per backend.
#[macro_export]
macro_rules! with_pool {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($p) => $body,
            $crate::db::Db::Postgres($p) => $body,
        }
    };
}

/// Which backend a database URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Result<Backend, Error> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            Err(Error::Config(format!(
                "database URL {url:?} is neither sqlite:PATH nor postgres://..."
            )))
        }
    }
}

impl Db {
    /// Connects and brings both apalis's and Conductor's schema up to date.
    pub async fn connect(url: &str) -> Result<Db, Error> {
        let db = Db::connect_only(url).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Connects without migrating (for reading a database as it is).
    pub async fn connect_only(url: &str) -> Result<Db, Error> {
        match Backend::of_url(url)? {
            Backend::Sqlite => {
                let opts = sqlite_options(url)?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(60))
                    .connect_with(opts)
                    .await?;
                Ok(Db::Sqlite(pool))
            }
            Backend::Postgres => {
                let opts = PgConnectOptions::from_str(url)
                    .map_err(|e| Error::Config(format!("bad Postgres URL: {e}")))?;
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(60))
                    .connect_with(opts)
                    .await?;
                Ok(Db::Postgres(pool))
            }
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs apalis's migrations and then Conductor's own.
    pub async fn migrate(&self) -> Result<(), Error> {
        match self {
            Db::Sqlite(pool) => {
                // apalis's setup sets `synchronous=OFF` on whatever connection it runs on; give it
                // a throwaway one so the shared pool keeps the durable settings.
                let opts = pool.connect_options().as_ref().clone();
                let setup = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts)
                    .await?;
                apalis_sqlite::SqliteStorage::setup(&setup)
                    .await
                    .map_err(|e| Error::Migrate(e.to_string()))?;
                setup.close().await;
                let mut m: Migrator = sqlx::migrate!("./migrations/sqlite");
                m.dangerous_set_table_name(MIGRATIONS_TABLE);
                m.run(pool)
                    .await
                    .map_err(|e| Error::Migrate(e.to_string()))?;
            }
            Db::Postgres(pool) => {
                // Concurrent first starts of several replicas would race on CREATE; serialise them.
                let mut conn = pool.acquire().await?;
                sqlx::query("SELECT pg_advisory_lock(7204551)")
                    .execute(&mut *conn)
                    .await?;
                let res = async {
                    apalis_postgres::PostgresStorage::setup(pool)
                        .await
                        .map_err(|e| Error::Migrate(e.to_string()))?;
                    let mut m: Migrator = sqlx::migrate!("./migrations/postgres");
                    m.dangerous_set_table_name(MIGRATIONS_TABLE);
                    m.run(pool).await.map_err(|e| Error::Migrate(e.to_string()))
                }
                .await;
                sqlx::query("SELECT pg_advisory_unlock(7204551)")
                    .execute(&mut *conn)
                    .await?;
                res?;
            }
        }
        Ok(())
    }

    /// Starts a write transaction. On SQLite it is `BEGIN IMMEDIATE`: it takes the write lock
    /// up front, so two writers never deadlock upgrading a read lock.
    pub async fn begin(&self) -> Result<Tx, Error> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    pub async fn close(&self) {
        with_pool!(self, |p| p.close().await)
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(_) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
    }
}

fn sqlite_options(url: &str) -> Result<SqliteConnectOptions, Error> {
    Ok(SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::Config(format!("bad SQLite URL {url:?}: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
        // The unique indexes on transport and event ids are hit at random; with SQLite's 2 MB
        // default cache each insert into a large history would read pages from disk.
        .pragma("cache_size", "-65536")
        .foreign_keys(true))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
