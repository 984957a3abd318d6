//! Receiving task files into the work dir. A name must be one plain file name: anything that
//! could leave the directory (`..`, a separator, an absolute path) is refused, as is more
//! data than the handshake announced.

use std::{io::Write, path::Path};

use anyhow::{bail, Context, Result};

use crate::session::Session;

use conductor::jobs::task_files::is_plain_file_name as safe_name;

/// Writes the attempt's task files into `dir`; returns how many.
pub async fn receive(session: &Session, dir: &Path, max_total: u64) -> Result<usize> {
    let chunks = session.fetch_files().await?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut total = 0u64;
    let mut files = 0;
    for chunk in chunks {
        if !safe_name(&chunk.name) {
            bail!(
                "refusing task file name {:?}: it would leave the work dir",
                chunk.name
            );
        }
        total += chunk.data.len() as u64;
        if max_total > 0 && total > max_total {
            bail!("task files exceed the announced {max_total} bytes");
        }
        let path = dir.join(&chunk.name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(chunk.offset == 0)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        if chunk.offset > 0 {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(chunk.offset))?;
        }
        f.write_all(&chunk.data)?;
        if chunk.last {
            files += 1;
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use conductor::jobs::task_files::is_plain_file_name as safe_name;

    #[test]
    fn names_that_leave_the_dir_are_refused() {
        for bad in [
            "../../etc/x",
            "/etc/passwd",
            "..",
            ".",
            "a/b",
            "",
            "a\\b",
            "x\0y",
        ] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        for good in ["TASK.md", "AGENTS.md", "job.json", ".env-not-really"] {
            assert!(safe_name(good), "{good:?}");
        }
    }
}
