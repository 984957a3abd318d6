//! The local spawner: each worker is a `conductor-worker` process on this machine, in its own
//! process group (so a signal to the conductor does not reach it), with its own work
//! directory and log file. Its agent runs in a group of its own, recorded in the work dir's
//! `agent.pgid`; stopping a worker kills both groups.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use futures::{future::BoxFuture, FutureExt};

use super::{Spawner, WorkerSpec};
use crate::{config::WorkerConfig, error::Error};

/// The file in a worker's work dir that holds its running agent's process group id.
pub const AGENT_PGID_FILE: &str = "agent.pgid";

pub struct LocalSpawner {
    pub config: WorkerConfig,
    /// The worker binary.
    pub program: PathBuf,
    /// Log level given to workers (`CONDUCTOR_LOG`).
    pub log: Option<String>,
}

impl LocalSpawner {
    pub fn new(mut config: WorkerConfig) -> Result<Self, Error> {
        // A worker runs in its own directory: a relative root would nest its files inside
        // itself and hand the agent paths it cannot open. `Config::load` resolves it already;
        // this covers a configuration built in code.
        config.work_root = std::path::absolute(&config.work_root).map_err(|e| {
            Error::Config(format!(
                "worker.work_root {}: {e}",
                config.work_root.display()
            ))
        })?;
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

/// Whether process `pid` is the worker `worker_id` (guards against a reused pid). Its command
/// line names it: a worker makes itself undumpable, so its environment is not readable.
fn is_worker(pid: i32, worker_id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"--worker-id" && w[1] == worker_id.as_bytes())
}

/// Whether process `pid` is the agent of worker `worker_id` (its environment names it).
fn is_agent_of(pid: i32, worker_id: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("CONDUCTOR_WORKER_ID={worker_id}");
    environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

impl Spawner for LocalSpawner {
    fn name(&self) -> &'static str {
        "local"
    }

    fn spawn<'a>(&'a self, spec: &'a WorkerSpec) -> BoxFuture<'a, Result<String, Error>> {
        async move {
            let dir = self.work_dir(&spec.worker_id);
            crate::secrets::private_dir(&self.config.work_root)?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Unavailable(format!("creating {}: {e}", dir.display())))?;
            let log = std::fs::File::create(dir.join("worker.log"))
                .map_err(|e| Error::Unavailable(format!("creating the worker log: {e}")))?;
            let log2 = log
                .try_clone()
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            let mut cmd = Command::new(&self.program);
            // On the command line (public, unlike the environment) so `stop` can check a pid.
            cmd.arg("--worker-id").arg(&spec.worker_id);
            // A clean environment: the conductor's own secrets (forge token, database URL)
            // are not the worker's business. Only what it needs, and what pass_env names.
            cmd.env_clear();
            for key in ["PATH", "HOME", "TMPDIR", "LANG"] {
                if let Ok(v) = std::env::var(key) {
                    cmd.env(key, v);
                }
            }
            for key in &self.config.pass_env {
                if let Some(v) = crate::secrets::get(key) {
                    cmd.env(key, v);
                }
            }
            // The worker takes these out of its environment too, and keeps them from the
            // agent and the remote.
            cmd.env("CONDUCTOR_SECRET_ENV", self.config.pass_env.join(","));
            if let Some(level) = &self.log {
                cmd.env("CONDUCTOR_LOG", level);
            }
            // JSON logs from the worker when the conductor logs JSON.
            if std::env::var_os("CONDUCTOR_LOG_JSON").is_some() {
                cmd.env("CONDUCTOR_LOG_JSON", "true");
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
            tracing::info!(worker_id = %spec.worker_id, job_id = spec.job_id, attempt = spec.attempt, pid, "worker started");
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
            // The worker's group first, so it starts nothing more; then the agent's own group.
            if is_worker(pid, worker_id) {
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                tracing::info!(worker_id, pid, "worker stopped");
            }
            let pgid_file = self.work_dir(worker_id).join(AGENT_PGID_FILE);
            if let Some(pgid) = std::fs::read_to_string(&pgid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
                .filter(|p| *p > 1)
            {
                if is_agent_of(pgid, worker_id) {
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    tracing::info!(worker_id, pgid, "agent stopped");
                }
            }
            Ok(())
        }
        .boxed()
    }
}
