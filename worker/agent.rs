//! Running the agent: `sh -c AGENT_COMMAND` in the clone, in its own process group so a
//! timeout (or the worker giving up) stops it and everything it started; then reading the
//! files it must leave in `agent-meta/`.

use std::{
    path::Path,
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
};

/// The running agent's process group, for [`kill_running`].
static RUNNING: AtomicI32 = AtomicI32::new(0);

/// Stops the running agent, if any (the worker is giving up).
pub fn kill_running() {
    let pgid = RUNNING.swap(0, Ordering::SeqCst);
    if pgid > 0 {
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// Runs the agent to completion; Err(reason) when it cannot start, times out, or exits
/// non-zero. While it runs, its process group id is in `pgid_file`, so the conductor's
/// spawner can stop the agent too when it stops this worker (the agent is in a group of its
/// own, which killing the worker's group does not reach).
pub async fn run(
    command: &str,
    repo: &Path,
    task_dir: &Path,
    timeout: Duration,
    worker_id: &str,
    pgid_file: &Path,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(repo)
        .env("TASK_FILE", task_dir.join("TASK.md"))
        .env("AGENTS_FILE", task_dir.join("AGENTS.md"))
        .env("JOB_FILE", task_dir.join("job.json"))
        .env("WORKER_PID", std::process::id().to_string())
        // Lets the spawner tell this agent from an unrelated process that reused its pid.
        .env("CONDUCTOR_WORKER_ID", worker_id)
        // The agent does not need the worker's secrets.
        .env_remove("WORKER_TOKEN")
        .env_remove("GIT_TOKEN")
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the agent: {e}"))?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    RUNNING.store(pgid, Ordering::SeqCst);
    if let Err(e) = std::fs::write(pgid_file, format!("{pgid}\n")) {
        tracing::warn!(error = %e, "cannot record the agent's process group");
    }
    tracing::info!(pgid, "agent started");
    let result = tokio::time::timeout(timeout, child.wait()).await;
    RUNNING.store(0, Ordering::SeqCst);
    // Whatever the agent left running in its group must not touch the clone while the
    // worker commits and pushes. (The group's id cannot belong to anyone else while a member
    // lives; once it is empty this signal finds nobody.)
    if pgid > 0 {
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(pgid_file);
    match result {
        Err(_) => {
            let _ = child.wait().await;
            Err(format!(
                "the agent timed out after {}",
                humantime::format_duration(timeout)
            ))
        }
        Ok(Err(e)) => Err(format!("waiting for the agent: {e}")),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("the agent exited with {status}")),
    }
}

/// What the agent left in `agent-meta/`.
pub struct Meta {
    /// `WAS_JOB_SUCCESSFUL`: Ok(true/false), or why it is unusable.
    pub successful: Result<bool, String>,
    /// Line 1 of `meta-info.txt` (cut to 119 characters), or empty.
    pub title: String,
    pub report: Option<String>,
}

/// A meta file as text. An agent's report may quote binary it read (a log, a database page),
/// so bytes that are not UTF-8 become U+FFFD instead of making the file look missing.
fn read_text(path: &Path) -> std::io::Result<String> {
    std::fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

pub fn read_meta(repo: &Path) -> Meta {
    let dir = repo.join("agent-meta");
    let successful = match read_text(&dir.join("WAS_JOB_SUCCESSFUL")) {
        Err(_) => Err("agent-meta/WAS_JOB_SUCCESSFUL is missing".to_owned()),
        Ok(text) => match text.strip_suffix('\n').unwrap_or(&text) {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!(
                "agent-meta/WAS_JOB_SUCCESSFUL must be exactly true or false, found {:?}",
                other.chars().take(40).collect::<String>()
            )),
        },
    };
    let title = read_text(&dir.join("meta-info.txt"))
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|l| l.trim().chars().take(119).collect())
        })
        .unwrap_or_default();
    let report = read_text(&dir.join("ending-report.md")).ok();
    Meta {
        successful,
        title,
        report,
    }
}
