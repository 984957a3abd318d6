//! `conductor-worker`: runs beside one agent (docs/design.md section 5).
//!
//! handshake → receive the task files → clone the repository → run the agent (with a
//! timeout) → read `agent-meta/` → on success commit and push `conductor/<worker id>/<slug>`
//! → report → exit. It heartbeats the whole time, and gives up cleanly when the conductor
//! stays unreachable past a deadline or says the attempt is over. The token and GIT_TOKEN are
//! never logged, written to a file, or put into the report.

mod agent;
mod files;
mod git;
mod session;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use conductor::jobs::task_files::JobSpec;

#[derive(Parser, Debug)]
#[command(
    name = "conductor-worker",
    version,
    about = "Runs one agent for Conductor"
)]
struct Args {
    /// This worker's id (one attempt of one job).
    #[arg(long, env = "WORKER_ID")]
    worker_id: String,
    /// The attempt's secret.
    #[arg(long, env = "WORKER_TOKEN", hide_env_values = true)]
    token: String,
    /// The conductor's worker protocol address.
    #[arg(long, env = "CONDUCTOR_ADDR")]
    conductor: String,
    /// Work directory (task files in `task/`, the clone in `repo/`).
    #[arg(long, env = "WORKER_DIR", default_value = ".")]
    dir: PathBuf,
    /// The agent, run with `sh -c` in the clone; `$TASK_FILE` is TASK.md's path.
    #[arg(
        long,
        env = "AGENT_COMMAND",
        default_value = r#"codex exec --full-auto "$(cat "$TASK_FILE")""#
    )]
    agent_command: String,
    #[arg(long, env = "AGENT_TIMEOUT", default_value = "45m", value_parser = humantime::parse_duration)]
    agent_timeout: Duration,
    /// Give up when the conductor is unreachable for this long.
    #[arg(long, env = "UNREACHABLE_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration)]
    unreachable_deadline: Duration,
    /// Log as JSON lines (the conductor passes its own choice on).
    #[arg(long, env = "CONDUCTOR_LOG_JSON")]
    log_json: bool,
    /// A JSON object of environment variables to take on before anything else, deleted once
    /// read: how the conductor hands the worker its variables through a route's
    /// `command_prefix` that does not carry the environment (`vagrant ssh -c`).
    #[arg(long)]
    env_file: Option<PathBuf>,
}

/// Takes on the variables of `--env-file PATH` (see [`Args::env_file`]) and deletes the file,
/// so the agent never finds it. Runs before the arguments are parsed (they read these
/// variables) and before any thread exists (the environment is not thread-safe).
fn load_env_file() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let Some(path) = argv
        .iter()
        .position(|a| a == "--env-file")
        .and_then(|i| argv.get(i + 1))
        .map(PathBuf::from)
    else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading --env-file {}", path.display()))?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    let vars: std::collections::BTreeMap<String, String> = serde_json::from_str(&text)
        .with_context(|| {
            format!(
                "--env-file {}: not a JSON object of strings",
                path.display()
            )
        })?;
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    Ok(())
}

impl Args {
    fn redacted(&self) -> String {
        format!(
            "worker {} dialing {} in {} (agent timeout {})",
            self.worker_id,
            self.conductor,
            self.dir.display(),
            humantime::format_duration(self.agent_timeout)
        )
    }
}

/// What the attempt produced, as reported.
struct Outcome {
    success: bool,
    title: String,
    report: String,
    branch: String,
    commit: String,
    failure: String,
}

impl Outcome {
    fn failed(failure: impl Into<String>, title: String, report: String) -> Outcome {
        Outcome {
            success: false,
            title,
            report,
            branch: String::new(),
            commit: String::new(),
            failure: failure.into(),
        }
    }
}

/// Where the running agent's process group id is kept, in the work dir (read by the local
/// spawner's `stop`).
const AGENT_PGID_FILE: &str = conductor::jobs::spawner::local::AGENT_PGID_FILE;

fn main() -> ExitCode {
    // Not dumpable: the agent (same user) cannot read this process's memory or
    // /proc/<pid>/environ. execve resets it, so the agent itself stays an ordinary process.
    conductor::secrets::harden();
    if let Err(e) = load_env_file() {
        eprintln!("conductor-worker: {e:#}");
        return ExitCode::from(2);
    }
    // Parsed before the secrets leave the environment (clap reads WORKER_TOKEN from it), and
    // before any thread exists (the environment is not thread-safe).
    let args = Args::parse();
    // The secrets came in the environment; once read, they are wiped from it (and from
    // /proc/<pid>/environ), so the agent finds them nowhere.
    let mut secret_names = vec!["WORKER_TOKEN".to_owned(), "GIT_TOKEN".to_owned()];
    if let Ok(more) = std::env::var("CONDUCTOR_SECRET_ENV") {
        secret_names.extend(more.split(',').filter(|n| !n.is_empty()).map(str::to_owned));
    }
    conductor::secrets::take(&secret_names.iter().map(String::as_str).collect::<Vec<_>>());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("conductor-worker: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async_main(args))
}

async fn async_main(mut args: Args) -> ExitCode {
    // Colour only on a terminal: a worker's log is usually a file (worker.log) or CloudWatch.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONDUCTOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    // Every path handed to the agent is absolute, whatever directory it runs in.
    match std::path::absolute(&args.dir) {
        Ok(dir) => args.dir = dir,
        Err(e) => {
            tracing::error!("work directory {}: {e}", args.dir.display());
            return ExitCode::from(2);
        }
    }
    tracing::info!("{}", args.redacted());
    // Every line of this worker names it, as the conductor's views do.
    let span = tracing::info_span!("worker", worker_id = %args.worker_id);
    match tracing::Instrument::instrument(work(args), span).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

async fn work(args: Args) -> Result<()> {
    let session = session::Session::connect(
        &args.conductor,
        &args.worker_id,
        &args.token,
        args.unreachable_deadline,
    )
    .await?;
    let hello = session.handshake().await?;
    tracing::info!(
        job = hello.job_id,
        attempt = hello.attempt,
        "handshake accepted"
    );
    let heartbeat =
        session.start_heartbeats(Duration::from_millis(hello.heartbeat_interval_ms.max(100)));

    let task_dir = args.dir.join("task");
    let received = files::receive(&session, &task_dir, hello.max_total_bytes).await?;
    tracing::info!(files = received, "task files received");
    let spec: JobSpec = serde_json::from_str(
        &std::fs::read_to_string(task_dir.join("job.json")).context("reading job.json")?,
    )
    .context("parsing job.json")?;

    let outcome = tokio::select! {
        outcome = attempt(&session, &args, &spec, &task_dir, &heartbeat) => outcome,
        why = heartbeat.lost() => {
            // The conductor is gone for good or gave this attempt up: stop without a report.
            agent::kill_running();
            anyhow::bail!("stopping: {why}");
        }
    };
    heartbeat.set_phase("reporting");
    // Whatever the agent wrote, no secret this worker holds leaves in the report.
    let secrets = conductor::secrets::values();
    let outcome = Outcome {
        title: conductor::jobs::task_files::redact(&outcome.title, &secrets),
        report: conductor::jobs::task_files::redact(&outcome.report, &secrets),
        failure: conductor::jobs::task_files::redact(&outcome.failure, &secrets),
        ..outcome
    };
    session
        .report(
            outcome.success,
            &outcome.title,
            &outcome.report,
            &outcome.branch,
            &outcome.commit,
            &outcome.failure,
        )
        .await?;
    tracing::info!(success = outcome.success, branch = %outcome.branch, failure = %outcome.failure, "reported; exiting");
    Ok(())
}

/// What credentials are asked for: reading the repository, or pushing to it.
#[derive(Clone, Copy)]
enum Purpose {
    Clone,
    Push,
}

/// Credentials for the next clone or push, minted by the conductor for this call (None when it
/// mints none: GIT_TOKEN from the environment, if any, is used). A minted token is held as a
/// secret: cut from the report and refused in any commit, like the environment's.
async fn push_credentials(
    session: &session::Session,
    purpose: Purpose,
) -> Result<Option<git::Creds>> {
    let (what, name) = match purpose {
        Purpose::Clone => ("clone", "MINTED_GIT_TOKEN_CLONE"),
        Purpose::Push => ("push", "MINTED_GIT_TOKEN_PUSH"),
    };
    let reply = session
        .git_credentials(what)
        .await
        .with_context(|| format!("asking the conductor for credentials to {what}"))?;
    if reply.password.is_empty() {
        return Ok(None);
    }
    conductor::secrets::hold(name, reply.password.clone());
    Ok(Some(git::Creds {
        username: reply.username,
        password: reply.password,
    }))
}

/// Clone, agent, meta files, push: every failure becomes a failed outcome with its reason.
async fn attempt(
    session: &session::Session,
    args: &Args,
    spec: &JobSpec,
    task_dir: &std::path::Path,
    heartbeat: &session::Heartbeats,
) -> Outcome {
    let repo_dir = args.dir.join("repo");
    heartbeat.set_phase("cloning");
    let creds = match push_credentials(session, Purpose::Clone).await {
        Ok(c) => c,
        Err(e) => return Outcome::failed(format!("{e:#}"), String::new(), String::new()),
    };
    let repo = match git::clone(&spec.repo, &spec.base, &repo_dir, creds).await {
        Ok(r) => r,
        Err(e) => {
            return Outcome::failed(
                format!("cloning {}: {e:#}", spec.repo),
                String::new(),
                String::new(),
            )
        }
    };
    // Earlier work of this job (a retry, a pull request still open): build on its branch
    // and push to it, which updates its pull request.
    let mut push_to = None;
    if let Some(c) = &spec.continuing {
        match git::continue_from(&repo_dir, &c.branch) {
            Ok(true) => {
                tracing::info!(branch = %c.branch, "continuing the earlier branch");
                push_to = Some(c.branch.clone());
            }
            Ok(false) => {
                tracing::warn!(branch = %c.branch, "the earlier branch is gone; starting from the base")
            }
            Err(e) => {
                return Outcome::failed(
                    format!("checking out {}: {e:#}", c.branch),
                    String::new(),
                    String::new(),
                )
            }
        }
    }
    if let Err(e) = git::prepare(&repo_dir, task_dir) {
        return Outcome::failed(
            format!("preparing the clone: {e:#}"),
            String::new(),
            String::new(),
        );
    }
    heartbeat.set_phase("agent");
    let run = agent::run(
        &args.agent_command,
        &repo_dir,
        task_dir,
        args.agent_timeout,
        &args.worker_id,
        &args.dir.join(AGENT_PGID_FILE),
    )
    .await;
    let meta = agent::read_meta(&repo_dir);
    let (title, report) = (meta.title.clone(), meta.report.clone().unwrap_or_default());
    if let Err(why) = run {
        return Outcome::failed(why, title, report);
    }
    let success = match meta.successful {
        Ok(s) => s,
        Err(why) => return Outcome::failed(why, title, report),
    };
    if meta.report.is_none() {
        return Outcome::failed("agent-meta/ending-report.md is missing", title, report);
    }
    if title.is_empty() {
        return Outcome::failed(
            "agent-meta/meta-info.txt is missing or its first line is empty",
            title,
            report,
        );
    }
    if !success {
        return Outcome::failed("the agent reported that the job failed", title, report);
    }
    heartbeat.set_phase("pushing");
    let branch = push_to.unwrap_or_else(|| format!("{}{}", spec.branch_prefix, git::slug(&title)));
    let creds = match push_credentials(session, Purpose::Push).await {
        Ok(c) => c,
        Err(e) => return Outcome::failed(format!("{e:#}"), title, report),
    };
    match git::commit_and_push(
        repo, &spec.repo, &repo_dir, &spec.base, &branch, &title, creds,
    )
    .await
    {
        Ok(commit) => Outcome {
            success: true,
            title,
            report,
            branch,
            commit,
            failure: String::new(),
        },
        Err(e) => Outcome::failed(format!("pushing {branch}: {e:#}"), title, report),
    }
}
