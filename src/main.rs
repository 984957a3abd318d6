//! The `conductor` command line: parses, sets up the process (secrets out of the environment,
//! logging, the runtime) and dispatches to [`cli`]. The service itself is the library's
//! ([`conductor::server`]).

mod cli;

use clap::Parser;
use cli::args::{Cli, Command};

/// Logs on stderr: text, or JSON lines; the level per module from `CONDUCTOR_LOG`, else
/// `default`.
fn init_logging(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONDUCTOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal (and not under NO_COLOR): a log file gets plain text.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A user error prints `Error: ` and its cause chain on one line, with any database password
/// hidden, and exits 1; a backtrace is for panics only, whatever `RUST_BACKTRACE` says.
fn main() -> std::process::ExitCode {
    // Agents run on this machine too: no process of theirs may read this one's memory or
    // /proc/<pid>/environ.
    conductor::secrets::harden();
    let cli = Cli::parse();
    // Commands that only print end quietly when their reader goes away (`| head`), as Unix
    // tools do, instead of panicking on the closed pipe. Not the ones that serve or run the
    // pipeline: their sockets must see EPIPE as an error, not a signal.
    if matches!(
        cli.command,
        Command::Scenario(_)
            | Command::History { .. }
            | Command::Jobs { .. }
            | Command::Routes { .. }
            | Command::Quarantine { .. }
            | Command::ShadowReport { .. }
            | Command::Completions { .. }
    ) {
        // SAFETY: one thread so far; restoring the default disposition of one signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // Before any thread exists: the forge token, the workers' git token and the database URL
    // (its password) leave the environment, to be read from memory only.
    let names = secret_names(&cli);
    conductor::secrets::take(&names.iter().map(String::as_str).collect::<Vec<_>>());
    // Tools that run the pipeline in-process (benches, replays) report their result on
    // stdout; the pipeline's own INFO lines would bury it.
    let default_log = match &cli.command {
        Command::Bench(_) | Command::Scenario(_) => {
            "warn,sqlx=error,apalis=error,apalis_core=error"
        }
        _ => "info,sqlx=error,apalis=warn,apalis_core=warn",
    };
    init_logging(cli.log_json, default_log);
    if cli.log_json {
        // Still one thread: local workers inherit the choice (see the local spawner).
        std::env::set_var("CONDUCTOR_LOG_JSON", "true");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "Error: {}",
                conductor::db::redact_passwords(&format!("{e:#}"))
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// The environment variables holding secrets for this command: the forge token or App key,
/// the Jira token, the webhook secret, what workers are passed (`worker.pass_env`), the
/// operator token (each as its configuration names it, and by its default name), and the
/// database URL.
fn secret_names(cli: &Cli) -> Vec<String> {
    let mut names: Vec<String> = [
        "GITHUB_TOKEN",
        "GIT_TOKEN",
        "CONDUCTOR_DATABASE_URL",
        "GITHUB_APP_KEY",
        "JIRA_TOKEN",
        "CONDUCTOR_JIRA_WEBHOOK_SECRET",
    ]
    .map(String::from)
    .to_vec();
    match &cli.command {
        Command::Run(run) => {
            if let Ok(c) = run.config.load() {
                names.push(c.forge.token_env.clone());
                names.push(c.forge.app_key_env.clone());
                names.push(c.tracker.token_env.clone());
                names.push(c.webhooks.jira_secret_env.clone());
                names.extend(c.worker.pass_env.iter().cloned());
                names.push(c.http.operator_token_env.clone());
            }
        }
        Command::Console { config, .. } => {
            if let Ok(c) = config.load() {
                names.push(c.http.operator_token_env.clone());
            }
        }
        _ => {}
    }
    names.sort();
    names.dedup();
    names
}
