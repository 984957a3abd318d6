//! The shutdown gate (docs/design.md section 6): deploy safety as pause and drain.
//!
//! The gate is a flag in the database (`flags.name = 'gate'`), so closing it pauses intake on
//! every replica. It is closed by writing `true` into `IS_CONDUCTOR_SHUTTING_DOWN` in a
//! replica's run directory (watched with inotify, so the gate reacts at once) or by
//! `conductor drain`; `false` or `conductor resume` reopens it. A SIGTERM closes the gate of
//! that one process only. While the gate is closed, intake stops (ingest, decide, claim and
//! spawn pause: nothing new is started) and the steps of already spawned jobs go on. When
//! nothing is in flight, the process writes `CONDUCTOR_READY_FOR_SAFE_SHUTDOWN` and exits 0.
//!
//! Beside the gate, the operator's pause (`conductor pause`, `flags.name = 'pause'`) stops
//! intake the same way but drains nothing and ends no process, and no start lifts it: it
//! holds across deploys and restarts until `conductor unpause`.

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::{
    db::{now_ms, Db},
    error::Error,
    with_pool,
};

/// The file a deployer writes `true` into to close the gate (and `false` to reopen it).
pub const GATE_FILE: &str = "IS_CONDUCTOR_SHUTTING_DOWN";
/// The file the conductor writes when nothing is in flight any more, just before it exits.
pub const READY_FILE: &str = "CONDUCTOR_READY_FOR_SAFE_SHUTDOWN";

/// The gate as stored: closed or not, by whom, when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GateState {
    pub closed: bool,
    pub by: String,
    pub since_ms: i64,
}

/// The two switches over intake, as stored: the deploy's gate (`drain`/`resume`, cleared by
/// every start) and the operator's pause (`pause`/`unpause`, which no start clears).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Switches {
    pub gate: GateState,
    pub pause: GateState,
}

impl Switches {
    /// Whether intake stays closed for either switch.
    pub fn intake_closed(&self) -> bool {
        self.gate.closed || self.pause.closed
    }
}

/// The flag names and their "closed" values.
const GATE: (&str, &str, &str) = ("gate", "closed", "open");
const PAUSE: (&str, &str, &str) = ("pause", "paused", "running");

/// Reads the global gate (open when never set).
pub async fn state(db: &Db) -> Result<GateState, Error> {
    Ok(switches(db).await?.gate)
}

/// Reads both switches in one query (each open when never set).
pub async fn switches(db: &Db) -> Result<Switches, Error> {
    const SQL: &str =
        "SELECT name, value, updated_by, updated_ms FROM flags WHERE name IN ('gate', 'pause')";
    let rows: Vec<(String, String, String, i64)> =
        with_pool!(db, |p| sqlx::query_as(SQL).fetch_all(p).await?);
    let find = |(name, closed, _): (&str, &str, &str)| {
        rows.iter()
            .find(|r| r.0 == name)
            .map(|(_, value, by, since_ms)| GateState {
                closed: value == closed,
                by: by.clone(),
                since_ms: *since_ms,
            })
            .unwrap_or(GateState {
                closed: false,
                by: String::new(),
                since_ms: 0,
            })
    };
    Ok(Switches {
        gate: find(GATE),
        pause: find(PAUSE),
    })
}

/// Closes or opens the global gate, recording who did it (in `flag_changes` when it changes).
pub async fn set(db: &Db, closed: bool, by: &str) -> Result<(), Error> {
    write_switch(db, GATE, closed, by).await?;
    tracing::info!(
        gate = if closed { GATE.1 } else { GATE.2 },
        by,
        "shutdown gate set"
    );
    Ok(())
}

/// Pauses or unpauses intake on every replica, recording who did it. Unlike the gate, a
/// pause survives every restart: only `unpause` lifts it.
pub async fn set_pause(db: &Db, paused: bool, by: &str) -> Result<(), Error> {
    write_switch(db, PAUSE, paused, by).await?;
    tracing::info!(
        pause = if paused { PAUSE.1 } else { PAUSE.2 },
        by,
        "intake pause set"
    );
    Ok(())
}

async fn write_switch(
    db: &Db,
    (name, closed_value, open_value): (&str, &str, &str),
    closed: bool,
    by: &str,
) -> Result<(), Error> {
    let value = if closed { closed_value } else { open_value };
    let mut tx = db.begin().await?;
    crate::scheduling::flags::write(&mut tx, name, value, by, now_ms()).await?;
    tx.commit().await?;
    Ok(())
}

/// What keeps a drain from finishing: job steps after spawn not yet done, and live workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct InFlight {
    pub job_steps: i64,
    pub workers: i64,
}

impl InFlight {
    pub fn is_empty(&self) -> bool {
        self.job_steps == 0 && self.workers == 0
    }
}

pub async fn in_flight(db: &Db) -> Result<InFlight, Error> {
    const STEPS: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM steps s JOIN runs r ON r.id = s.run_id
        WHERE r.workflow = 'job' AND r.status = 'running'
          AND s.step IN ('deliver', 'await', 'open_pr', 'finish') AND s.status IN ('queued', 'running')";
    // `spawning` is not counted: no worker is known to run yet, and the step that would
    // start one is intake, paused; a drain must not wait forever on an attempt a crash left
    // there. The next conductor's `spawn` picks it up again.
    const WORKERS: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM job_attempts
        WHERE state IN ('spawned', 'handshaken', 'delivered')";
    let job_steps: i64 = with_pool!(db, |p| sqlx::query_scalar(STEPS).fetch_one(p).await?);
    let workers: i64 = with_pool!(db, |p| sqlx::query_scalar(WORKERS).fetch_one(p).await?);
    Ok(InFlight { job_steps, workers })
}

/// Parses the gate file: `true` closes, `false` opens; anything else is reported and ignored.
pub fn parse_file(text: &str) -> Option<bool> {
    match text.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Writes the gate file (`false` at start), removing a stale ready file.
pub fn init_files(run_dir: &Path) -> Result<(), Error> {
    // Created private to this user when missing: only the deploy tooling writes the gate.
    crate::secrets::private_dir(run_dir)
        .map_err(|e| Error::Config(format!("run directory {}: {e}", run_dir.display())))?;
    std::fs::write(run_dir.join(GATE_FILE), "false\n")
        .map_err(|e| Error::Config(format!("writing {GATE_FILE}: {e}")))?;
    let _ = std::fs::remove_file(run_dir.join(READY_FILE));
    Ok(())
}

pub fn write_ready(run_dir: &Path) -> Result<PathBuf, Error> {
    let path = run_dir.join(READY_FILE);
    std::fs::write(&path, "true\n")
        .map_err(|e| Error::Config(format!("writing {}: {e}", path.display())))?;
    Ok(path)
}

/// Watches the gate file; sends its value on every change. Keep the watcher alive.
pub fn watch_file(
    run_dir: &Path,
) -> Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<bool>), Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let file = run_dir.join(GATE_FILE);
    let watched = file.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !event.paths.iter().any(|p| p.file_name() == watched.file_name()) {
            return;
        }
        // Only writes: reading the file below raises access events of its own.
        use notify::event::{AccessKind, AccessMode, EventKind};
        let written = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(_)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        if !written {
            return;
        }
        if let Ok(text) = std::fs::read_to_string(&watched) {
            match parse_file(&text) {
                Some(v) => {
                    let _ = tx.send(v);
                }
                None if text.trim().is_empty() => {} // mid-write: the next event has the value
                None => tracing::warn!(file = %watched.display(), content = %text.trim(), "ignoring the gate file: it must say true or false"),
            }
        }
    })
    .map_err(|e| Error::Config(format!("watching {}: {e}", file.display())))?;
    // The directory, not the file: editors and `echo >` replace or truncate it.
    watcher
        .watch(run_dir, RecursiveMode::NonRecursive)
        .map_err(|e| Error::Config(format!("watching {}: {e}", run_dir.display())))?;
    Ok((watcher, rx))
}

#[cfg(test)]
mod tests {
    #[test]
    fn gate_file_values() {
        assert_eq!(super::parse_file("true\n"), Some(true));
        assert_eq!(super::parse_file(" false "), Some(false));
        assert_eq!(super::parse_file("yes"), None);
    }
}
