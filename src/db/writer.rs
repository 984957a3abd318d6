//! SQLite's write lock, queued in-process.
//!
//! SQLite lets one transaction write at a time. The others wait in its busy handler, which
//! sleeps and retries on a growing schedule (up to 100 ms a sleep) and serves nobody in
//! order: with several writers, one can keep missing the lock until its `busy_timeout` runs
//! out ("database is locked") while the others take turns. So a process's own transactions
//! ([`super::Db::begin`]) first take their turn here, in arrival order (tokio's mutex is
//! fair), and only then `BEGIN IMMEDIATE`; SQLite's busy handler is left to arbitrate
//! between processes and apalis's single-statement writes, a few contenders at most.
//!
//! What still meets SQLite's lock (apalis's own statements, writes outside a transaction,
//! other processes) waits in [`busy_wait`] instead of SQLite's default busy handler: it tries
//! again every millisecond instead of sleeping up to 100 ms between tries, so it finds the
//! short gaps between this process's back-to-back transactions. With the default handler
//! apalis's task fetch was seen to miss them for 30 s and fail "database is locked".
//!
//! A writer that waits longer than SQLite's own `busy_timeout` goes on without its turn and
//! meets SQLite's lock as before (a transaction that begins another on the same file would
//! otherwise wait for itself forever, instead of failing "database is locked").
//!
//! One queue per database file, by the path the pool was opened with: two spellings of one
//! path get two queues, which is only as slow as before (SQLite still keeps them apart).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use sqlx::SqlitePool;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// SQLite's busy handler for every connection of the pool ([`install_busy_wait`]): `tries`
/// is how often this lock attempt was already refused. Retries every millisecond, up to
/// [`BUSY_TRIES`] times (the busy timeout's length), then lets the statement fail
/// SQLITE_BUSY ("database is locked").
unsafe extern "C" fn busy_wait(
    _: *mut std::ffi::c_void,
    tries: std::ffi::c_int,
) -> std::ffi::c_int {
    if tries >= BUSY_TRIES {
        return 0;
    }
    // On the connection's own thread (sqlx runs each SQLite connection on one): sleeping
    // here blocks nothing else.
    std::thread::sleep(Duration::from_millis(1));
    1
}

/// Tries of [`busy_wait`]: at least 1 ms each, about [`super::SQLITE_BUSY_TIMEOUT`] in all.
const BUSY_TRIES: std::ffi::c_int = super::SQLITE_BUSY_TIMEOUT.as_millis() as std::ffi::c_int;

/// Replaces a new connection's busy handler (sqlx set `busy_timeout`'s) with [`busy_wait`].
pub async fn install_busy_wait(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    // SAFETY: a live connection's handle, used under the connection's own worker lock; the
    // handler is a plain function that keeps no state.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_busy_handler(
            handle.as_raw_handle().as_ptr().cast(),
            Some(busy_wait),
            std::ptr::null_mut(),
        )
    };
    if rc != 0 {
        return Err(sqlx::Error::Protocol(format!(
            "setting SQLite's busy handler failed (code {rc})"
        )));
    }
    Ok(())
}

/// A transaction's place at the head of its file's queue: the next one waits until it drops.
#[derive(Debug)]
pub struct Turn {
    _held: Option<OwnedMutexGuard<()>>,
}

static QUEUES: LazyLock<Mutex<HashMap<PathBuf, Arc<AsyncMutex<()>>>>> =
    LazyLock::new(Default::default);

/// Waits for this process's turn to write to `pool`'s file, for up to `patience`. An
/// in-memory database is one per connection: nothing to queue for.
pub async fn turn(pool: &SqlitePool, patience: Duration) -> Turn {
    let options = pool.connect_options();
    let path = options.get_filename();
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Turn { _held: None };
    }
    let queue = QUEUES
        .lock()
        .expect("the writer queue map is never poisoned: nothing panics holding it")
        .entry(path.to_owned())
        .or_default()
        .clone();
    match tokio::time::timeout(patience, queue.lock_owned()).await {
        Ok(held) => Turn { _held: Some(held) },
        Err(_) => {
            tracing::warn!(
                database = %path.display(),
                waited = ?patience,
                "no turn to write within the busy timeout; going on to SQLite's own lock"
            );
            Turn { _held: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    const PATIENCE: Duration = Duration::from_secs(600);

    /// Writers of one file take turns in the order they asked: the second waits for the
    /// first's turn to end, and a third that asked later comes after the second.
    #[tokio::test]
    async fn writers_of_one_file_take_turns_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        let pool = sqlx::SqlitePool::connect_lazy_with(opts.create_if_missing(true));
        let first = super::turn(&pool, PATIENCE).await;
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for n in [2, 3] {
            let (pool, order, asked_tx) = (pool.clone(), order.clone(), asked_tx.clone());
            waiters.push(tokio::spawn(async move {
                let fut = super::turn(&pool, PATIENCE);
                tokio::pin!(fut);
                // Polled once, so it is queued before the next writer asks.
                assert!(futures::poll!(&mut fut).is_pending());
                asked_tx.send(n).unwrap();
                let _turn = fut.await;
                order.lock().unwrap().push(n);
            }));
            assert_eq!(asked.recv().await, Some(n));
        }
        // Neither can have its turn while the first holds it.
        tokio::task::yield_now().await;
        assert!(order.lock().unwrap().is_empty());
        drop(first);
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![2, 3]);
        // A writer that waits past its patience goes on without a turn (to SQLite's lock).
        let held = super::turn(&pool, PATIENCE).await;
        let late = super::turn(&pool, Duration::from_millis(1)).await;
        assert!(late._held.is_none() && held._held.is_some());
        drop((held, late));
        // Another file's writers have a queue of their own.
        let other: sqlx::sqlite::SqliteConnectOptions =
            format!("sqlite:{}", dir.path().join("u.db").display())
                .parse()
                .unwrap();
        let other = sqlx::SqlitePool::connect_lazy_with(other);
        let _mine = super::turn(&pool, PATIENCE).await;
        tokio::time::timeout(Duration::from_secs(30), super::turn(&other, PATIENCE))
            .await
            .expect("another file's queue is not this one");
    }
}
