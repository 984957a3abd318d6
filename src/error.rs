//! The library's error type, split by what the caller should do about it: retry (the database
//! or queue hiccuped) or give up (the input or configuration is wrong).

/// Errors of the Conductor library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error("durable queue error: {0}")]
    Queue(String),
    #[error("configuration error: {0}")]
    Config(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("inconsistent state: {0}")]
    Corrupt(String),
    /// A remote service (the forge, the spawner's API) failed in a way that may pass: a
    /// connection error, a timeout, a 5xx or a rate limit.
    #[error("remote service unavailable: {0}")]
    Unavailable(String),
    /// A remote service asked to be left alone for a while (HTTP 429, or 403 with its rate
    /// limit spent): ask again after `wait`, as its `Retry-After` or rate-limit reset said.
    #[error("remote service rate-limited: {why} (again in {}s)", .wait.as_secs())]
    Throttled {
        why: String,
        wait: std::time::Duration,
    },
    /// A remote service refused the request for good (a 4xx other than rate limits).
    #[error("remote service refused: {0}")]
    Refused(String),
    /// Another execution of the same step finished it first (a task re-queued while its first
    /// run was still going). Not a failure: this execution's writes are rolled back and it
    /// simply ends.
    #[error("superseded: {0}")]
    Superseded(String),
    /// This replica cannot follow a shared setting another replica wrote (a flag naming a
    /// policy its configuration lacks). Retried: fixing the flag or the configuration lets
    /// the waiting work through.
    #[error("configuration mismatch: {0}")]
    Mismatch(String),
}

impl Error {
    /// Whether the database cannot store anything right now: a full disk or database, a
    /// read-only file or server, an I/O error. Nothing is wrong with the work itself: it waits
    /// (intake stops until a probe write succeeds) and goes on when writes succeed again, and
    /// such a failure never counts toward a step's attempts.
    pub fn is_storage(&self) -> bool {
        let d = match self {
            Error::Db(sqlx::Error::Database(d)) => d,
            // apalis's queue writes fail as text only.
            Error::Queue(text) => return is_storage_message(text),
            _ => return false,
        };
        let code = d.code().unwrap_or_default();
        if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
            // The primary code is the low byte of an extended one: READONLY 8, IOERR 10,
            // FULL 13.
            return code
                .parse::<i32>()
                .is_ok_and(|c| matches!(c & 0xff, 8 | 10 | 13));
        }
        // Postgres: disk_full, insufficient_resources, out_of_memory,
        // read_only_sql_transaction.
        matches!(&*code, "53100" | "53000" | "53200" | "25006")
    }

    /// Whether trying the same thing again later can succeed. Connection trouble, pool
    /// exhaustion, lock timeouts, serialization failures and deadlocks are transient; a
    /// constraint violation or bad input is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            e if e.is_storage() => true,
            Error::Db(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(d) => {
                    let code = d.code().unwrap_or_default();
                    // Postgres: serialization_failure, deadlock_detected, lock_not_available,
                    // admin_shutdown, cannot_connect_now. SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6).
                    matches!(
                        &*code,
                        "40001" | "40P01" | "55P03" | "57P01" | "57P03" | "5" | "6" | "517" | "261"
                    )
                }
                _ => false,
            },
            Error::Queue(_)
            | Error::Unavailable(_)
            | Error::Throttled { .. }
            | Error::Mismatch(_) => true,
            Error::Migrate(_)
            | Error::Config(_)
            | Error::Invalid(_)
            | Error::Corrupt(_)
            | Error::Refused(_)
            | Error::Superseded(_) => false,
        }
    }
}

impl Error {
    /// How long to wait before asking a remote service again, for an error that may pass: the
    /// service's own word when it gave one, else `default`. None for an error that will not
    /// pass by waiting.
    ///
    /// A remote service that refused the configured credentials or answered as something else
    /// ([`Error::Config`]) is asked again too, every five minutes at least: the work waiting on
    /// it is kept until someone fixes the configuration.
    pub fn remote_wait(&self, default: std::time::Duration) -> Option<std::time::Duration> {
        match self {
            Error::Throttled { wait, .. } => Some(*wait),
            Error::Unavailable(_) => Some(default),
            Error::Config(_) => Some(default.max(std::time::Duration::from_secs(300))),
            _ => None,
        }
    }
}

/// Whether an error's text (all apalis gives of its backend's failures) says the database
/// cannot store anything: SQLite's FULL, IOERR and READONLY, Postgres's disk full and
/// read-only transaction.
pub fn is_storage_message(text: &str) -> bool {
    [
        "(code: 13)",
        "database or disk is full",
        "disk I/O error",
        "attempt to write a readonly database",
        "(code: 53100)",
        "could not extend file",
        "No space left on device",
        "(code: 25006)",
        "read-only transaction",
    ]
    .iter()
    .any(|m| text.contains(m))
}
