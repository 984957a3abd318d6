//! Storage trouble: the database cannot store anything (a full disk or database, a read-only
//! file or server, an I/O error). Nothing is wrong with the work, and nothing may be lost or
//! given up because of it: a step that meets it waits here until a write succeeds and then
//! runs again (the same attempt); the supervisor closes intake meanwhile and says why, once,
//! and reopens it when a write succeeds again.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::Duration,
};

use super::Db;
use crate::error::Error;

static TROUBLE: AtomicBool = AtomicBool::new(false);
static CAUSE: Mutex<String> = Mutex::new(String::new());

/// Records that a write failed for lack of storage (`cause` is the error).
pub fn trouble(cause: &str) {
    *CAUSE.lock().expect("storage cause") = cause.to_owned();
    TROUBLE.store(true, Ordering::SeqCst);
}

/// The cause of the current trouble, if the database is known not to take writes.
pub fn in_trouble() -> Option<String> {
    TROUBLE
        .load(Ordering::SeqCst)
        .then(|| CAUSE.lock().expect("storage cause").clone())
}

/// Whether a write failed for lack of storage since the last successful [`probe`]: cheap
/// enough to ask on every connection release.
pub fn suspected() -> bool {
    TROUBLE.load(Ordering::Relaxed)
}

/// Free space a SQLite database's filesystem needs before intake resumes: one small write can
/// succeed on a disk with no room for real work, and intake would flap.
const HEADROOM: u64 = 1 << 20;

/// Bytes free on the filesystem holding `path` (None if it cannot be read).
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the struct it is given for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// One write and, on SQLite, at least a megabyte free beside the file: whether the database
/// takes writes. Clears the trouble when it does. On Postgres the write needs new space (a
/// 64 KiB row, rolled back): a rewrite that fits in an existing page passes on a full disk.
pub async fn probe(db: &Db) -> Result<(), Error> {
    const SQL: &str = "UPDATE flags SET updated_ms = updated_ms WHERE name = 'gate'";
    const PG_SPACE: &str = "INSERT INTO flags (name, value, updated_ms, updated_by)
        VALUES ('storage-probe', repeat(md5(random()::text), 2048), 0, 'storage probe')";
    if let Db::Postgres(pool) = db {
        let result: Result<(), Error> = async {
            let mut tx = pool.begin().await?;
            sqlx::query(PG_SPACE).execute(&mut *tx).await?;
            tx.rollback().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            if e.is_storage() {
                trouble(&e.to_string());
            }
            return Err(e);
        }
    }
    if let Db::Sqlite(pool) = db {
        let file = pool.connect_options().get_filename().to_owned();
        if let Some(free) = free_bytes(&file).filter(|f| *f < HEADROOM) {
            return Err(Error::Unavailable(format!(
                "{} KiB free beside {}",
                free / 1024,
                file.display()
            )));
        }
    }
    let result: Result<(), Error> = async {
        let mut tx = db.begin().await?;
        crate::with_conn!(&mut tx, |c| sqlx::query(SQL)
            .execute(c)
            .await?
            .rows_affected());
        tx.commit().await
    }
    .await;
    match result {
        Ok(()) => {
            TROUBLE.store(false, Ordering::SeqCst);
            Ok(())
        }
        Err(e) => {
            if e.is_storage() {
                trouble(&e.to_string());
            }
            Err(e)
        }
    }
}

/// Waits until a write succeeds (probing every second), at most `limit`. Whether it did.
pub async fn wait_writable(db: &Db, limit: Duration) -> bool {
    let until = tokio::time::Instant::now() + limit;
    loop {
        if probe(db).await.is_ok() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether a SQLite connection returning to the pool is fit to be used again. After a write
/// fails with SQLITE_FULL, SQLite may keep the transaction (and the database's write lock) open
/// or roll it back by itself, and sqlx's own count of open transactions may no longer match:
/// kept, such a connection makes every other writer fail with "database is locked", or its
/// next `BEGIN` fail. A connection in a transaction on either count is closed instead (which
/// rolls back and releases the lock).
pub async fn release_sqlite(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    let sqlite_open = {
        let mut handle = conn.lock_handle().await?;
        // SAFETY: a live connection's handle, used under the connection's own worker lock.
        unsafe {
            libsqlite3_sys::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr().cast()) == 0
        }
    };
    if sqlite_open || conn.is_in_transaction() {
        tracing::warn!("closing a database connection a failed write left inside a transaction");
        return Ok(false);
    }
    Ok(true)
}
