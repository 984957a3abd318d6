//! The local spawner: each worker is a `conductor-worker` process on this machine, in its own
//! process group (so a signal to the conductor does not reach it), with its own work
//! directory and log file. Its agent runs in a group of its own, recorded in the work dir's
//! `agent.pgid`; stopping a worker kills both groups. A route's environment runs the worker
//! inside a project's development environment: through a command prefix
//! (`devcontainer exec …`, `vagrant ssh -c "{command}"`) or in a container image run by
//! `worker.container_engine`.

use std::{
    path::{Path, PathBuf},
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

    /// The worker's whole environment.
    fn worker_env(&self, spec: &WorkerSpec, dir: &Path) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        for key in HOST_VARS {
            if let Ok(v) = std::env::var(key) {
                vars.push((key.to_owned(), v));
            }
        }
        for key in &self.config.pass_env {
            if let Some(v) = crate::secrets::get(key) {
                vars.push((key.clone(), v));
            }
        }
        // The worker takes these out of its environment too, and keeps them from the agent
        // and the remote.
        vars.push((
            "CONDUCTOR_SECRET_ENV".into(),
            self.config.pass_env.join(","),
        ));
        if let Some(level) = &self.log {
            vars.push(("CONDUCTOR_LOG".into(), level.clone()));
        }
        // JSON logs from the worker when the conductor logs JSON.
        if std::env::var_os("CONDUCTOR_LOG_JSON").is_some() {
            vars.push(("CONDUCTOR_LOG_JSON".into(), "true".into()));
        }
        let duration = |d| humantime::format_duration(d).to_string();
        vars.extend([
            ("WORKER_ID".into(), spec.worker_id.clone()),
            ("WORKER_TOKEN".into(), spec.token.clone()),
            ("CONDUCTOR_ADDR".into(), spec.conductor_addr.clone()),
            ("WORKER_DIR".into(), dir.display().to_string()),
            ("AGENT_COMMAND".into(), self.config.agent_command.clone()),
            ("AGENT_TIMEOUT".into(), duration(self.config.agent_timeout)),
            (
                "UNREACHABLE_DEADLINE".into(),
                duration(self.config.unreachable_deadline),
            ),
        ]);
        vars
    }

    /// The command that starts the worker, and the variables its own process gets: the worker
    /// binary itself with every variable, or the route's development environment — a command
    /// prefix, or an image run by the container engine. Those get only the host's `PATH`,
    /// `HOME` and `LANG` (a prefix tool or engine client is an ordinary, readable process);
    /// the worker's variables go in a private file it reads and deletes before anything else
    /// runs, without the host's paths (the environment has its own). The worker id is on
    /// every command line (public, unlike the environment) so `stop` can check a pid.
    fn command(
        &self,
        spec: &WorkerSpec,
        dir: &Path,
        vars: Vec<(String, String)>,
    ) -> Result<(Command, Vec<(String, String)>), Error> {
        let program = self.program.display().to_string();
        let mut worker = vec![
            program.clone(),
            "--worker-id".into(),
            spec.worker_id.clone(),
        ];
        let env = match spec.environment.as_ref() {
            Some(e) if e.image.is_some() || !e.command_prefix.is_empty() => e,
            _ => {
                let mut cmd = Command::new(&program);
                cmd.args(&worker[1..]);
                return Ok((cmd, vars));
            }
        };
        let carried: std::collections::BTreeMap<&str, &str> = vars
            .iter()
            .filter(|(k, _)| !HOST_VARS.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let file = dir.join(ENV_FILE);
        crate::secrets::write_private(
            &file,
            serde_json::to_string(&carried)
                .expect("strings serialise")
                .as_bytes(),
        )?;
        worker.extend(["--env-file".into(), file.display().to_string()]);
        let argv: Vec<String> = match &env.image {
            Some(image) => {
                let engine = self.config.container_engine.as_deref().ok_or_else(|| {
                    Error::Config(format!(
                        "image {image:?} needs worker.container_engine (docker or podman)"
                    ))
                })?;
                // The worker binary and its work directory mounted at the same paths, the
                // host's network (it dials the conductor on loopback), no variables.
                let mut argv: Vec<String> = vec![
                    engine.into(),
                    "run".into(),
                    "--rm".into(),
                    "--init".into(),
                    "--network=host".into(),
                    format!("--name={}", container_name(&spec.worker_id)),
                    format!("--volume={program}:{program}:ro"),
                    format!("--volume={d}:{d}", d = dir.display()),
                    format!("--workdir={}", dir.display()),
                ];
                argv.push(image.clone());
                argv.extend(worker);
                argv
            }
            None if env.command_prefix.iter().any(|p| p.contains("{command}")) => {
                // A prefix that takes one command string (`vagrant ssh -c`).
                let line = format!(
                    "cd {} && exec {}",
                    quote(&dir.display().to_string()),
                    worker
                        .iter()
                        .map(|w| quote(w))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                env.command_prefix
                    .iter()
                    .map(|p| p.replace("{command}", &line))
                    .collect()
            }
            None => env.command_prefix.iter().cloned().chain(worker).collect(),
        };
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        let host: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| PREFIX_VARS.contains(&k.as_str()))
            .collect();
        Ok((cmd, host))
    }
}

/// The host's variables a worker gets. A route's environment has its own, so they stay out of
/// its env file; the prefix tool or engine client gets these, less `TMPDIR`.
const HOST_VARS: [&str; 4] = ["PATH", "HOME", "TMPDIR", "LANG"];
const PREFIX_VARS: [&str; 3] = ["PATH", "HOME", "LANG"];

/// The file of a worker's variables when it runs in a route's environment (see
/// [`LocalSpawner::command`]); the worker deletes it on start, `stop` and a failed spawn too.
const ENV_FILE: &str = "worker.env";

/// The container a worker runs in, when its route names an image.
fn container_name(worker_id: &str) -> String {
    format!("conductor-{worker_id}")
}

/// `text` as one shell word: as is when it holds nothing a shell reads specially.
fn quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Whether process `pid` is the worker `worker_id` (guards against a reused pid). Its command
/// line names it — as two words, or inside the one command string a prefix such as
/// `vagrant ssh -c` is given: a worker makes itself undumpable, so its environment is not
/// readable.
fn is_worker(pid: i32, worker_id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let quoted = format!("--worker-id {}", quote(worker_id));
    args.windows(2)
        .any(|w| w[0] == b"--worker-id" && w[1] == worker_id.as_bytes())
        || args
            .iter()
            .any(|a| String::from_utf8_lossy(a).contains(&quoted))
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
            // A clean environment: the conductor's own secrets (forge token, database URL)
            // are not the worker's business. Only what it needs, and what pass_env names.
            let vars = self.worker_env(spec, &dir);
            let (mut cmd, vars) = self.command(spec, &dir, vars)?;
            cmd.env_clear();
            cmd.envs(vars.iter().map(|(k, v)| (k, v)));
            cmd.current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let mut child = cmd.spawn().map_err(|e| {
                let _ = std::fs::remove_file(dir.join(ENV_FILE));
                Error::Config(format!(
                    "cannot start the worker with {}: {e}",
                    cmd.get_program().to_string_lossy()
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
            // A worker in a container outlives its engine's client: remove the container
            // (nothing happens when the worker ran without one).
            if let Some(engine) = &self.config.container_engine {
                let removed = tokio::process::Command::new(engine)
                    .args(["rm", "--force", &container_name(worker_id)])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
                if let Err(e) = removed {
                    tracing::warn!(worker_id, engine, error = %e, "could not remove the worker's container");
                }
            }
            // A worker that never started in its environment left its variables behind.
            let _ = std::fs::remove_file(self.work_dir(worker_id).join(ENV_FILE));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Environment;

    fn spawner(engine: Option<&str>) -> LocalSpawner {
        let mut config = WorkerConfig {
            container_engine: engine.map(str::to_owned),
            ..WorkerConfig::default()
        };
        config.command = Some(PathBuf::from("/opt/conductor/conductor-worker"));
        LocalSpawner::new(config).unwrap()
    }

    fn spec(environment: Option<Environment>) -> WorkerSpec {
        WorkerSpec {
            worker_id: "j7-a1".into(),
            token: "secret-token-0123456789".into(),
            conductor_addr: "http://127.0.0.1:7471".into(),
            job_id: 7,
            attempt: 1,
            environment,
        }
    }

    /// An image route: the engine runs the worker with its binary and work directory mounted,
    /// and neither its command line nor the engine client's environment holds the token; the
    /// variables are in the private file, without the host's paths.
    #[test]
    fn an_image_gets_the_variables_in_a_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = spawner(Some("podman"));
        let spec = spec(Some(Environment {
            image: Some("ghcr.io/acme/dev:1".into()),
            ..Default::default()
        }));
        let vars = s.worker_env(&spec, dir.path());
        let (cmd, host) = s.command(&spec, dir.path(), vars).unwrap();
        let argv: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let d = dir.path().display();
        assert_eq!(argv[..3], ["podman", "run", "--rm"]);
        assert!(argv.contains(&format!("--volume={d}:{d}")), "{argv:?}");
        assert!(
            argv.contains(&"--name=conductor-j7-a1".to_owned()),
            "{argv:?}"
        );
        let image = argv.iter().position(|a| a == "ghcr.io/acme/dev:1").unwrap();
        assert_eq!(
            argv[image + 1..],
            [
                "/opt/conductor/conductor-worker".to_owned(),
                "--worker-id".into(),
                "j7-a1".into(),
                "--env-file".into(),
                format!("{d}/worker.env"),
            ]
        );
        assert!(!argv.iter().any(|a| a.starts_with("--env=")), "{argv:?}");
        assert!(host.iter().all(|(k, _)| PREFIX_VARS.contains(&k.as_str())));
        let file: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(ENV_FILE)).unwrap())
                .unwrap();
        assert_eq!(file["WORKER_TOKEN"], "secret-token-0123456789");
        assert!(!file.contains_key("PATH") && !file.contains_key("HOME"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(ENV_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// Without an environment the worker is started directly, its variables in its own
    /// (undumpable) process, and no file is written.
    #[test]
    fn no_environment_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = spawner(None);
        let spec = spec(None);
        let vars = s.worker_env(&spec, dir.path());
        let (cmd, env) = s.command(&spec, dir.path(), vars).unwrap();
        assert_eq!(cmd.get_program(), "/opt/conductor/conductor-worker");
        assert!(env.iter().any(|(k, _)| k == "WORKER_TOKEN"));
        assert!(!dir.path().join(ENV_FILE).exists());
    }

    /// A `{command}` prefix gets the worker's command line as one shell string a worker id
    /// check can find again.
    #[test]
    fn a_command_string_prefix_names_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let s = spawner(None);
        let spec = spec(Some(Environment {
            command_prefix: vec![
                "vagrant".into(),
                "ssh".into(),
                "-c".into(),
                "{command}".into(),
            ],
            ..Default::default()
        }));
        let vars = s.worker_env(&spec, dir.path());
        let (cmd, _) = s.command(&spec, dir.path(), vars).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[..2], ["ssh", "-c"]);
        assert!(
            args[2].contains(&format!("--worker-id {}", quote("j7-a1")))
                && args[2].starts_with("cd ")
                && !args[2].contains("secret-token"),
            "{args:?}"
        );
    }
}
