//! Secrets out of an agent's reach. An agent runs on the same machine as its worker (and, with
//! the local spawner, as the conductor), possibly as the same user, and may be hostile: it can
//! read `/proc/<pid>/environ` of every process it may trace, and any file its user can open.
//!
//! - [`take`] reads secret environment variables once, keeps them in this process's memory,
//!   removes them from the environment (no child inherits them) and overwrites their bytes in
//!   the environment block the kernel shows as `/proc/<pid>/environ`.
//! - [`harden`] makes the process undumpable: another process of the same user can neither
//!   trace it nor read its memory or `/proc/<pid>/environ`.
//! - [`private_dir`] creates directories only their owner can enter.
//! - [`hash_token`] is how attempt tokens are stored: a database reader learns nothing it can
//!   authenticate with.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    path::Path,
    sync::{Mutex, OnceLock},
};

use sha2::{Digest, Sha256};

use crate::error::Error;

fn held() -> &'static Mutex<BTreeMap<String, String>> {
    static HELD: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

extern "C" {
    static mut environ: *mut *mut libc::c_char;
}

/// Takes the named variables out of the environment into this process's memory. Call it
/// first thing in `main`, before any other thread exists (the environment is not
/// thread-safe). Variables that are not set are skipped.
pub fn take(names: &[&str]) {
    let mut map = held().lock().expect("secrets lock");
    for name in names {
        let Ok(value) = std::env::var(name) else {
            continue;
        };
        // The bytes of every `NAME=value` entry, found before the variable is removed: unsetenv
        // only drops the pointer, and the kernel's view of the environment is those bytes.
        let prefix = format!("{name}=");
        let mut entries: Vec<(*mut u8, usize)> = Vec::new();
        // SAFETY: `environ` is a NULL-terminated array of NUL-terminated strings; no other
        // thread runs yet (documented precondition), so nothing changes it meanwhile.
        unsafe {
            let mut p = environ;
            while !p.is_null() && !(*p).is_null() {
                let entry = CStr::from_ptr(*p).to_bytes();
                if entry.starts_with(prefix.as_bytes()) {
                    entries.push((
                        (*p as *mut u8).add(prefix.len()),
                        entry.len() - prefix.len(),
                    ));
                }
                p = p.add(1);
            }
        }
        std::env::remove_var(name);
        for (start, len) in entries {
            // SAFETY: the value bytes of an entry that is no longer referenced by `environ`;
            // libc never frees environment strings, so the memory is still ours to write.
            unsafe { std::ptr::write_bytes(start, b'x', len) };
        }
        map.insert((*name).to_owned(), value);
    }
}

/// A secret taken by [`take`], else the environment variable of that name (a library caller
/// that did not take it, such as an in-process test).
pub fn get(name: &str) -> Option<String> {
    if let Some(v) = held().lock().expect("secrets lock").get(name) {
        return Some(v.clone());
    }
    std::env::var(name).ok()
}

/// Holds a secret this process obtained other than from its environment (a push token the
/// conductor minted), under `name`, so it is redacted and refused in pushes like the rest.
pub fn hold(name: &str, value: String) {
    held()
        .lock()
        .expect("secrets lock")
        .insert(name.to_owned(), value);
}

/// Every secret value this process holds (for redaction and for refusing to push one).
pub fn values() -> Vec<String> {
    held()
        .lock()
        .expect("secrets lock")
        .values()
        .filter(|v| !v.is_empty())
        .cloned()
        .collect()
}

/// Makes this process undumpable: processes of the same user can no longer read its memory
/// or `/proc/<pid>/environ`. `execve` resets it, so children are ordinary processes.
pub fn harden() {
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
}

/// Creates `dir` (and missing parents) with mode 0700 for the directories it creates; an
/// existing directory keeps its mode.
pub fn private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Unavailable(format!("creating {}: {e}", dir.display())))
}

/// Writes `bytes` to `path`, readable by this user only (mode 0600 from its creation).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| Error::Unavailable(format!("writing {}: {e}", path.display())))
}

/// How an attempt token is stored: `sha256:` and the hex digest.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Whether `token` matches what is stored for it (a hash; or, for an attempt written before
/// tokens were hashed, the token itself). Constant-time in the compared bytes.
pub fn token_matches(stored: &str, token: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    let candidate = if stored.starts_with("sha256:") {
        hash_token(token)
    } else {
        token.to_owned()
    };
    let (a, b) = (stored.as_bytes(), candidate.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_still_match() {
        let h = hash_token("abc");
        assert!(h.starts_with("sha256:") && !h.contains("abc"));
        assert!(token_matches(&h, "abc"));
        assert!(!token_matches(&h, "abd"));
        assert!(!token_matches(&h, ""));
        assert!(token_matches("legacy", "legacy"));
    }

    #[test]
    fn a_taken_secret_leaves_the_environment_and_proc() {
        // Tests share the process: a name no other test uses.
        std::env::set_var("CONDUCTOR_TEST_SECRET_TAKEN", "hunter2-unique-value");
        take(&["CONDUCTOR_TEST_SECRET_TAKEN"]);
        assert!(std::env::var("CONDUCTOR_TEST_SECRET_TAKEN").is_err());
        assert_eq!(
            get("CONDUCTOR_TEST_SECRET_TAKEN").as_deref(),
            Some("hunter2-unique-value")
        );
        assert!(values().iter().any(|v| v == "hunter2-unique-value"));
    }
}
