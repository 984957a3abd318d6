//! The local spawner: each worker is a `conductor-worker` process on this machine, in its own
//! process group (so a signal to the conductor does not reach it, and stopping it also stops
//! its agent), with its own work directory and log file.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use futures::{future::BoxFuture, FutureExt};

use super::{Spawner, WorkerSpec};
use crate::{config::WorkerConfig, error::Error};

pub struct LocalSpawner {
    pub config: WorkerConfig,
    /// The worker binary.
    pub program: PathBuf,
    /// Log level given to workers (`CONDUCTOR_LOG`).
    pub log: Option<String>,
}

impl LocalSpawner {
    pub fn new(config: WorkerConfig) -> Result<Self, Error> {
        let program = match &config.command {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| Error::Config(format!("cannot find the running executable: {e}")))?
                .with_file_name("conductor-worker"),
        };
        Ok(LocalSpawner {
            config,
            program,
            log: std::env::var("CONDUCTOR_LOG").ok(),
        })
    }

    fn work_dir(&self, worker_id: &str) -> PathBuf {
        self.config.work_root.join(worker_id)
    }
}

/// Whether process `pid` is the worker `worker_id` (guards against a reused pid).
fn is_worker(pid: i32, worker_id: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("WORKER_ID={worker_id}");
    environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

impl Spawner for LocalSpawner {
    fn name(&self) -> &'static str {
        "local"
    }

    fn spawn<'a>(&'a self, spec: &'a WorkerSpec) -> BoxFuture<'a, Result<String, Error>> {
        async move {
            let dir = self.work_dir(&spec.worker_id);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Unavailable(format!("creating {}: {e}", dir.display())))?;
            let log = std::fs::File::create(dir.join("worker.log"))
                .map_err(|e| Error::Unavailable(format!("creating the worker log: {e}")))?;
            let log2 = log
                .try_clone()
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            let mut cmd = Command::new(&self.program);
            // A clean environment: the conductor's own secrets (forge token, database URL)
            // are not the worker's business. Only what it needs, and what pass_env names.
            cmd.env_clear();
            for key in ["PATH", "HOME", "TMPDIR", "LANG"] {
                if let Ok(v) = std::env::var(key) {
                    cmd.env(key, v);
                }
            }
            for key in &self.config.pass_env {
                if let Ok(v) = std::env::var(key) {
                    cmd.env(key, v);
                }
            }
            if let Some(level) = &self.log {
                cmd.env("CONDUCTOR_LOG", level);
            }
            cmd.env("WORKER_ID", &spec.worker_id)
                .env("WORKER_TOKEN", &spec.token)
                .env("CONDUCTOR_ADDR", &spec.conductor_addr)
                .env("WORKER_DIR", &dir)
                .env("AGENT_COMMAND", &self.config.agent_command)
                .env(
                    "AGENT_TIMEOUT",
                    humantime::format_duration(self.config.agent_timeout).to_string(),
                )
                .env(
                    "UNREACHABLE_DEADLINE",
                    humantime::format_duration(self.config.unreachable_deadline).to_string(),
                )
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let mut child = cmd.spawn().map_err(|e| {
                Error::Config(format!(
                    "cannot start the worker {}: {e}",
                    self.program.display()
                ))
            })?;
            let pid = child.id();
            // Reap it when it exits; if the conductor dies first, init adopts it and the
            // worker carries on (its report is accepted after the conductor restarts).
            std::thread::spawn(move || child.wait());
            tracing::info!(worker_id = %spec.worker_id, job = spec.job_id, attempt = spec.attempt, pid, "worker started");
            Ok(format!("pid:{pid}"))
        }
        .boxed()
    }

    fn stop<'a>(&'a self, worker_id: &'a str, handle: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let pid: i32 = handle
                .strip_prefix("pid:")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::Corrupt(format!("bad local worker handle {handle:?}")))?;
            if is_worker(pid, worker_id) {
                // The whole group: the worker and its agent.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                tracing::info!(worker_id, pid, "worker stopped");
            }
            Ok(())
        }
        .boxed()
    }
}
