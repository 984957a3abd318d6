//! Crash points for the crash-safety tests: `CONDUCTOR_FAILPOINTS=ingest.after_commit,...`
//! makes the process SIGKILL itself when it reaches that point, exactly as a `kill -9` from
//! outside would at that moment; `NAME=pause` instead holds the process there for a second
//! (to act on it at that moment from outside). Unset (always, in production) this is one
//! atomic load.

use std::sync::OnceLock;

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("CONDUCTOR_FAILPOINTS")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Kills the process with SIGKILL if the failpoint `name` is armed, or pauses it for a second
/// if it is armed as `name=pause`.
pub fn hit(name: &str) {
    if armed()
        .iter()
        .any(|a| a.strip_suffix("=pause") == Some(name))
    {
        tracing::warn!(failpoint = name, "failpoint armed: pausing for a second");
        std::thread::sleep(std::time::Duration::from_secs(1));
        return;
    }
    if armed().iter().any(|a| a == name) {
        tracing::warn!(failpoint = name, "failpoint armed: killing the process");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
