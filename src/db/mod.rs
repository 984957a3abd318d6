//! The database: one pool shared by apalis and Conductor's own tables, on SQLite (embedded
//! default) or Postgres (production).
//!
//! Queries are written once and compiled for both backends through [`with_conn!`](crate::with_conn) and
//! [`with_pool!`](crate::with_pool): the macro expands the same body for each driver, so the SQL text (which
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

pub mod storage;

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

/// How long the first connection may take before the database counts as unreachable. Long
/// enough for a Postgres across a region, short enough that an operator at a terminal learns
/// the cause (refused, DNS, authentication) at once instead of after a pool's minute.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `url` with its password replaced by `***`: the form in which a database URL may appear in
/// errors, logs and status output.
pub fn redact_url(url: &str) -> String {
    redact_passwords(url)
}

/// Every `scheme://user:password@` in `text` with the password replaced by `***`. Applied to
/// every error the binary prints, so a driver message that quotes its URL leaks nothing.
pub fn redact_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The URL runs to the next whitespace or quote. Its userinfo ends at the last '@' in
        // it, even if a (wrongly unescaped) password holds '/', '?' or '#'.
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let url = &tail[..end];
        match (url.rfind('@'), url.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&url[..colon]);
                out.push_str(":***");
                out.push_str(&redact_param(&url[at..]));
            }
            _ => out.push_str(&redact_param(url)),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `password=...` query parameters hidden.
fn redact_param(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("password=") {
        let (head, tail) = rest.split_at(i + "password=".len());
        out.push_str(head);
        out.push_str("***");
        rest = &tail[tail.find('&').unwrap_or(tail.len())..];
    }
    out.push_str(rest);
    out
}

/// Whether a command may create the database it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// `run`, `submit`, `demo`: a missing SQLite file is created.
    CreateIfMissing,
    /// Commands that read or steer an existing deployment (`jobs`, `status`, `history`,
    /// `drain`...): a missing SQLite file is an error, never a new empty database that would
    /// read as "nothing is running".
    MustExist,
}

impl Db {
    /// Connects and brings both apalis's and Conductor's schema up to date.
    pub async fn connect(url: &str) -> Result<Db, Error> {
        Db::open(url, Open::CreateIfMissing).await
    }

    /// Connects (creating a SQLite file only if `open` allows) and migrates.
    pub async fn open(url: &str, open: Open) -> Result<Db, Error> {
        let db = Db::connect_with(url, open).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Connects to an existing database without migrating (for reading it as it is).
    pub async fn connect_only(url: &str) -> Result<Db, Error> {
        Db::connect_with(url, Open::MustExist).await
    }

    async fn connect_with(url: &str, open: Open) -> Result<Db, Error> {
        match Backend::of_url(url)? {
            Backend::Sqlite => {
                let opts = sqlite_options(url)?;
                let path = opts.get_filename().to_owned();
                let in_memory = path.as_os_str().is_empty() || path.as_os_str() == ":memory:";
                if open == Open::MustExist && !in_memory && !path.exists() {
                    return Err(Error::Config(format!(
                        "database {} does not exist (pass --database URL or set CONDUCTOR_DATABASE_URL to the conductor's database)",
                        path.display()
                    )));
                }
                if !in_memory {
                    private_sqlite_file(&path)?;
                }
                // Room for several queues' tasks at once without a long wait for a connection
                // (they still write one at a time; each connection is a thread of sqlx's).
                let pool = SqlitePoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(60))
                    .after_release(|conn, _| {
                        Box::pin(async move {
                            // Only after a write failed for lack of storage: the check costs
                            // a round trip to the connection's thread.
                            if storage::suspected() {
                                return storage::release_sqlite(conn).await;
                            }
                            Ok(true)
                        })
                    })
                    .connect_with(opts)
                    .await
                    .map_err(|e| {
                        Error::Unavailable(format!("cannot open {}: {e}", path.display()))
                    })?;
                Ok(Db::Sqlite(pool))
            }
            Backend::Postgres => {
                let opts = PgConnectOptions::from_str(url).map_err(|e| {
                    Error::Config(format!("bad Postgres URL {}: {e}", redact_url(url)))
                })?;
                // One connection first, under a deadline, so the error names the real cause;
                // a pool would wait its whole acquire timeout and report only "timed out".
                let shown = redact_url(url);
                match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::ConnectOptions::connect(&opts))
                    .await
                {
                    Ok(Ok(conn)) => {
                        use sqlx::Connection;
                        let _ = conn.close().await;
                    }
                    Ok(Err(e)) => {
                        return Err(Error::Unavailable(format!(
                            "cannot connect to {shown}: {e}"
                        )))
                    }
                    Err(_) => {
                        return Err(Error::Unavailable(format!(
                            "cannot connect to {shown}: no answer within {}s",
                            CONNECT_TIMEOUT.as_secs()
                        )))
                    }
                }
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(60))
                    .connect_with(opts)
                    .await
                    .map_err(|e| Error::Unavailable(format!("cannot connect to {shown}: {e}")))?;
                Ok(Db::Postgres(pool))
            }
        }
    }

    /// A pool for the queue's own bookkeeping: apalis's fetches, locks, acknowledgements and
    /// heartbeats, and [`crate::engine::begin_step`]'s attempt count. On Postgres its
    /// connections commit with `synchronous_commit = off`: such a commit does not wait for its
    /// WAL flush, and only a crash of the Postgres server itself (not of the conductor) can
    /// lose the last fraction of a second of them. Every one of those writes is safe to lose:
    /// a lost lock or acknowledgement runs the task again, which finds its step done (or runs
    /// it, if the step's own commit was lost too), and a lost attempt count allows one attempt
    /// more. A step's own work keeps committing durably on the main pool, and its flush
    /// carries every earlier bookkeeping commit with it (the WAL is one sequence). SQLite's
    /// WAL mode with `synchronous = NORMAL` already commits without a flush: the same pool.
    pub fn bookkeeping(&self, max_connections: u32) -> Db {
        match self {
            Db::Sqlite(_) => self.clone(),
            Db::Postgres(p) => {
                let opts = p
                    .connect_options()
                    .as_ref()
                    .clone()
                    .options([("synchronous_commit", "off")]);
                Db::Postgres(
                    PgPoolOptions::new()
                        .max_connections(max_connections)
                        .acquire_timeout(Duration::from_secs(60))
                        .connect_lazy_with(opts),
                )
            }
        }
    }

    /// The database as an operator may see it: a SQLite file's path, or Postgres's user, host,
    /// port and database (never a password).
    pub fn describe(&self) -> String {
        match self {
            Db::Sqlite(p) => format!("sqlite:{}", p.connect_options().get_filename().display()),
            Db::Postgres(p) => {
                let o = p.connect_options();
                format!(
                    "postgres://{}@{}:{}/{}",
                    o.get_username(),
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or_default()
                )
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

    /// Whether every migration this build knows is applied (a readiness check: a replica of an
    /// older build, or a database a newer build migrated, answers false). Reaches the database.
    pub async fn schema_current(&self) -> Result<bool, Error> {
        let known = match self {
            Db::Sqlite(_) => sqlx::migrate!("./migrations/sqlite"),
            Db::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
        };
        let latest = known.migrations.iter().map(|m| m.version).max();
        // MIGRATIONS_TABLE, spelled out for a static query.
        const LATEST_APPLIED: &str = "SELECT MAX(version) FROM conductor_migrations WHERE success";
        let applied: Option<i64> = crate::with_pool!(self, |p| sqlx::query_scalar(LATEST_APPLIED)
            .fetch_one(p)
            .await?);
        Ok(applied == latest)
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

/// How long ago apalis worker `name` last heartbeated, by the database's clock (apalis writes
/// `last_seen` with it); None if it is not registered.
pub async fn apalis_worker_silence(db: &Db, name: &str) -> Result<Option<Duration>, Error> {
    // SQLite keeps epoch seconds, Postgres a timestamp.
    const SQLITE: &str =
        "SELECT CAST(strftime('%s', 'now') AS INTEGER) - last_seen FROM Workers WHERE id = $1";
    const POSTGRES: &str = "SELECT CAST(EXTRACT(EPOCH FROM NOW() - last_seen) * 1000 AS BIGINT)
        FROM apalis.workers WHERE id = $1";
    let ms: Option<i64> = match db {
        Db::Sqlite(p) => sqlx::query_scalar::<_, i64>(SQLITE)
            .bind(name)
            .fetch_optional(p)
            .await?
            .map(|s| s.saturating_mul(1000)),
        Db::Postgres(p) => {
            sqlx::query_scalar::<_, i64>(POSTGRES)
                .bind(name)
                .fetch_optional(p)
                .await?
        }
    };
    Ok(ms.map(|ms| Duration::from_millis(ms.max(0) as u64)))
}

impl Tx {
    pub async fn commit(self) -> Result<(), Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    /// Rolls back now (dropping a transaction rolls it back too, but only when its connection
    /// is next used: SQLite's write lock would be held until then).
    pub async fn rollback(self) -> Result<(), Error> {
        match self {
            Tx::Sqlite(t) => t.rollback().await?,
            Tx::Postgres(t) => t.rollback().await?,
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

/// Creates a SQLite database file readable by this user only: it holds the job history and
/// the hashes workers authenticate with, and agents on the same machine must not read it.
/// SQLite gives the `-wal` and `-shm` files the database file's mode. An existing file keeps
/// its mode.
fn private_sqlite_file(path: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Unavailable(format!("creating {}: {e}", dir.display())))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Unavailable(format!(
            "creating {}: {e}",
            path.display()
        ))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_wherever_a_url_appears() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.internal:5432/conductor"),
            "postgres://app:***@db.internal:5432/conductor"
        );
        assert_eq!(
            redact_passwords(
                "opening postgres://u:p%40ss@h/d?sslmode=require failed; again postgresql://x:y@z"
            ),
            "opening postgres://u:***@h/d?sslmode=require failed; again postgresql://x:***@z"
        );
        // No password, nothing to hide.
        assert_eq!(redact_url("postgres://app@h/d"), "postgres://app@h/d");
        assert_eq!(
            redact_url("postgres://app:pa/ss?#@h/d"),
            "postgres://app:***@h/d"
        );
        assert_eq!(
            redact_url("postgres://h/d?user=app&password=s3cret&sslmode=require"),
            "postgres://h/d?user=app&password=***&sslmode=require"
        );
        assert_eq!(redact_url("sqlite:conductor.db"), "sqlite:conductor.db");
    }
}
