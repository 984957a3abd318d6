//! The `conductor` command line.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
mod demo;
mod drain_bench;
mod ingest_bench;
mod soak;

use conductor::{
    bench,
    config::Config,
    context::Env,
    db::{now_ms, Backend, Db},
    flags, gate, grpc, history, inbox, jobs,
    policy::Policy,
    runtime::{self, RunOptions},
    scenario::{self, gen, replay},
    workflows,
};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "conductor",
    version,
    about = "Schedules and supervises AI coding agents for tickets and AWS incidents"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "CONDUCTOR_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct DbArg {
    /// Database URL: sqlite:PATH (embedded default) or postgres://...
    // Global, so `conductor flags set X --database D` works as well as `flags --database D set X`.
    #[arg(
        long,
        global = true,
        env = "CONDUCTOR_DATABASE_URL",
        default_value = "sqlite:conductor.db"
    )]
    database: String,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Job settings: routing, timings, worker, forge (see conductor.example.toml). Used if
    /// present; CONDUCTOR_<SECTION>__<KEY> variables override it.
    #[arg(
        long = "config",
        global = true,
        env = "CONDUCTOR_CONFIG",
        default_value = "conductor.toml"
    )]
    path: PathBuf,
}

impl ConfigArg {
    /// Whether the file was named (by --config or CONDUCTOR_CONFIG): then it must exist.
    fn explicit(&self) -> bool {
        std::env::var_os("CONDUCTOR_CONFIG").is_some()
            || self.path != std::path::Path::new("conductor.toml")
    }

    fn load(&self) -> Result<Config> {
        Ok(Config::load(&self.path, self.explicit())?)
    }
}

#[derive(clap::Args, Clone)]
struct PolicyArg {
    /// Alarm chaining window (inclusive) of the built-in policy.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, conflicts_with = "policy")]
    window: Duration,
    /// The authoritative policy: `default`, a [policies.NAME] of --config, or an inline spec
    /// such as `window=30m,max_age=6h,group=account+alarm` [default: the built-in, --window].
    #[arg(long)]
    policy: Option<String>,
    /// A candidate policy to evaluate in shadow beside it (named or inline, as --policy); the
    /// verdicts follow the decisions.
    #[arg(long)]
    candidate: Option<String>,
    /// What alarms may do: off, shadow or on.
    #[arg(long, default_value = "on", value_parser = parse_incidents)]
    incidents: flags::Incidents,
    #[command(flatten)]
    config: ConfigArg,
}

fn parse_incidents(text: &str) -> Result<flags::Incidents, String> {
    flags::Incidents::parse(text).map_err(|e| e.to_string())
}

impl PolicyArg {
    /// The replay's scheduling, checked as `conductor run` checks the flags.
    fn scheduling(&self) -> Result<flags::Scheduling> {
        let config = self.config.load()?;
        let settings = flags::Settings::from_config(&config)?;
        let policy = match &self.policy {
            Some(name) => settings.catalog.resolve(name)?,
            None => Policy::with_window(self.window),
        };
        let candidate = match self.candidate.as_deref() {
            None | Some(flags::NONE) => None,
            Some(name) => Some(settings.catalog.resolve(name)?),
        };
        if let Some(c) = &candidate {
            if c.name == policy.name {
                bail!(
                    "--candidate names the authoritative policy {:?} itself: it would only ever agree with itself",
                    policy.name
                );
            }
            if c.spec.behaves_like(&policy.spec) {
                tracing::warn!(candidate = %c.name, policy = %policy.name, "the candidate has the authoritative policy's settings: expect 100% AGREE");
            }
        }
        Ok(flags::Scheduling {
            policy,
            incidents: self.incidents,
            candidate: candidate.map(Ok),
            candidate_timeout: settings.candidate_timeout,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker pool: every step of every workflow, until SIGTERM/SIGINT (or idle).
    Run {
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        config: ConfigArg,
        /// Tasks each step queue runs at once [default: 1 on SQLite (one writer), 4 on Postgres].
        #[arg(long)]
        concurrency: Option<usize>,
        /// How often an idle SQLite worker polls its queue.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        poll_interval: Duration,
        /// apalis heartbeat; a dead process's tasks are re-queued after three missed ones. On
        /// SQLite an idle step queue was seen to miss a newly queued task until its next
        /// heartbeat, so keep it short there.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        heartbeat: Duration,
        /// Give a step up (and fail its run) after this many attempts.
        #[arg(long, default_value_t = 5)]
        max_attempts: i64,
        /// Serve only these step queues (comma-separated; default: all).
        #[arg(long, value_delimiter = ',')]
        steps: Vec<String>,
        /// Exit once no workflow run is in flight, printing the decisions on record.
        #[arg(long)]
        until_idle: bool,
        /// Where the shutdown gate's files live: IS_CONDUCTOR_SHUTTING_DOWN (watched: write
        /// true to drain, false to reopen) and CONDUCTOR_READY_FOR_SAFE_SHUTDOWN.
        #[arg(long, env = "CONDUCTOR_RUN_DIR", default_value = ".")]
        run_dir: PathBuf,
        /// Start even when a kind of job that can start has no route (its jobs then fail
        /// "no route" and its tickets are used up).
        #[arg(long)]
        allow_unrouted: bool,
        /// Messages to submit to the inbox before starting (JSON or JSONL files, as `submit`).
        files: Vec<PathBuf>,
    },
    /// Put messages into the embedded inbox: JSON files (one message each) or JSONL replay files.
    Submit {
        #[command(flatten)]
        db: DbArg,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Replay, run and generate scheduling scenarios.
    #[command(subcommand)]
    Scenario(ScenarioCmd),
    /// Print job history: a message, ticket, incident, job or run.
    History {
        #[command(flatten)]
        db: DbArg,
        #[command(subcommand)]
        subject: HistoryCmd,
    },
    /// Close the shutdown gate on every replica: intake pauses, running jobs finish, and each
    /// conductor exits once nothing is in flight.
    Drain {
        #[command(flatten)]
        db: DbArg,
    },
    /// Reopen the shutdown gate: intake resumes on every replica still running.
    Resume {
        #[command(flatten)]
        db: DbArg,
    },
    /// Show the flags (incidents, policy, candidate) as this replica resolves them, the
    /// policies it knows and the latest changes; `flags set NAME=VALUE...` changes them for
    /// every replica.
    Flags {
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: Option<FlagsCmd>,
    },
    /// Shadow evaluation of candidate policies: verdict counts, agreement rate, spawns each
    /// policy decided, and the latest divergences with both decisions.
    ShadowReport {
        #[command(flatten)]
        db: DbArg,
        /// Only this candidate (default: every candidate with evaluations).
        #[arg(long)]
        candidate: Option<String>,
        /// Divergences to list.
        #[arg(long, default_value_t = 10)]
        last: i64,
        /// Only evaluations of this recent period, e.g. 2h.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// The gate, the resolved flags, jobs in flight and live workers.
    Status {
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// List jobs: state, attempts, branch, pull request or issue.
    Jobs {
        #[command(flatten)]
        db: DbArg,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// List quarantined jobs (given up after jobs.max_attempts attempts).
    Quarantine {
        #[command(flatten)]
        db: DbArg,
    },
    /// Run an ended job (quarantined, failed or succeeded) again, as a new run of its workflow.
    Retry {
        #[command(flatten)]
        db: DbArg,
        job: i64,
    },
    /// The whole product on this machine: SQLite, a bare repository as the remote, a scripted
    /// agent, two tickets and an alarm storm; prints the jobs, branches and pull requests.
    Demo {
        /// Where the demo's database, repositories and work directories go.
        #[arg(long, default_value = "conductor-demo")]
        dir: PathBuf,
    },
    /// Crash safety under abuse: replicas SIGKILLed and restarted while a generated stream
    /// flows through; compared with a sequential replay. Exits 1 on any lost message,
    /// duplicate spawn or pull request, or orphaned worker.
    Soak(soak::SoakArgs),
    /// Measure throughput.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Check or show the configuration `conductor run` would use.
    Config {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration: keys and values, routes for every kind of job, paths, the
    /// worker and agent programs, the forge token, AWS settings. Exits 1 on any failure.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration, each value with where it came from (default, the
    /// file, or an environment variable); passwords in URLs are hidden.
    Show,
}

#[derive(Subcommand)]
enum ScenarioCmd {
    /// Replay a JSONL file (or a database's stored messages) with virtual time and print the decisions.
    Replay {
        /// JSONL replay file: one {"message_id", "body"} per line.
        #[arg(long, required_unless_present = "from_database")]
        events: Option<PathBuf>,
        /// Re-decide the messages stored in this database and report where decisions differ.
        #[arg(long, conflicts_with = "events")]
        from_database: Option<String>,
        /// Database to replay into (default: a fresh temporary SQLite file).
        #[arg(long)]
        database: Option<String>,
        #[command(flatten)]
        policy: PolicyArg,
        /// Messages per transaction. Larger batches touch each index page fewer times per
        /// message; a SQLite replay holds the database's write lock for one batch.
        #[arg(long, default_value_t = replay::DEFAULT_BATCH)]
        batch: usize,
        /// How decisions are stored: auto (write-behind on SQLite, statements on Postgres),
        /// statements (the live path's queries one by one) or write-behind.
        #[arg(long, value_enum, default_value_t = replay::StoreMode::Auto)]
        store: replay::StoreMode,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run scenario files; exits non-zero if any expectation fails.
    Run {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print each scenario's full report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a synthetic replay file (seeded, reproducible) to stdout or --out.
    Gen {
        #[arg(long, global = true)]
        out: Option<PathBuf>,
        #[command(subcommand)]
        spec: gen::GenSpec,
    },
}

#[derive(Subcommand)]
enum FlagsCmd {
    /// Set flags for every replica, e.g. `incidents=shadow candidate=short`. Refused when the
    /// result contradicts itself; setting a candidate clears its shadow state.
    Set {
        #[arg(required = true, value_parser = parse_pair)]
        pairs: Vec<(String, String)>,
        /// Who to record as having made the change [default: cli:HOST:PID].
        #[arg(long)]
        by: Option<String>,
    },
    /// The latest flag changes (the gate included): who, when, old and new value.
    History {
        #[arg(default_value_t = 20)]
        n: i64,
    },
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

#[derive(Subcommand)]
enum HistoryCmd {
    /// A message by transport id or internal id.
    Message {
        id: String,
    },
    Ticket {
        key: String,
    },
    Incident {
        id: i64,
    },
    Job {
        id: i64,
    },
    /// The steps of a workflow run.
    Run {
        id: i64,
    },
    /// The latest messages and their decisions.
    Recent {
        #[arg(default_value_t = 20)]
        n: i64,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Decision throughput on SQLite (and Postgres if given), per-event cost at 10k vs 200k
    /// stored events, and the rate through the full apalis pipeline.
    Decide {
        /// Events for the SQLite replay (slices of 10,000 are timed separately).
        #[arg(long, default_value_t = 210_000)]
        events: usize,
        /// Postgres server to create a scratch database on (e.g. postgres://127.0.0.1:5432/postgres).
        #[arg(long)]
        postgres: Option<String>,
        /// Concurrent deciders on Postgres.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Events for the Postgres run.
        #[arg(long, default_value_t = 50_000)]
        postgres_events: usize,
        /// Events through the full apalis pipeline (per backend).
        #[arg(long, default_value_t = 5_000)]
        pipeline_events: usize,
        /// Events for the SQLite replay through the statement-by-statement store.
        #[arg(long, default_value_t = 50_000)]
        statement_events: usize,
    },
    /// How fast the shutdown gate acts: gate closed to intake stopped, last agent's report to
    /// the ready file, and the whole drain, over real `conductor run` children.
    Drain(drain_bench::DrainArgs),
    /// The SQS transport into decisions: messages per second from a full queue, and the
    /// latency from SendMessage to the committed decision (p50, p99), against any
    /// SQS-compatible endpoint.
    Ingest(ingest_bench::IngestArgs),
}

fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("CONDUCTOR_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,sqlx=error,apalis=warn,apalis_core=warn")
        });
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
    // Before any thread exists: the forge token, the workers' git token and the database URL
    // (its password) leave the environment, to be read from memory only.
    let names = secret_names(&cli);
    conductor::secrets::take(&names.iter().map(String::as_str).collect::<Vec<_>>());
    init_logging(cli.log_json);
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
    match runtime.block_on(dispatch(cli)) {
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

/// The environment variables holding secrets for this command: the forge token and what
/// workers are passed (`forge.token_env`, `worker.pass_env` of its configuration, and their
/// defaults), and the database URL.
fn secret_names(cli: &Cli) -> Vec<String> {
    let mut names: Vec<String> = ["GITHUB_TOKEN", "GIT_TOKEN", "CONDUCTOR_DATABASE_URL"]
        .map(String::from)
        .to_vec();
    if let Command::Run { config, .. } = &cli.command {
        if let Ok(c) = config.load() {
            names.push(c.forge.token_env.clone());
            names.extend(c.worker.pass_env.iter().cloned());
        }
    }
    names.sort();
    names.dedup();
    names
}

async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            db,
            config,
            concurrency,
            poll_interval,
            heartbeat,
            max_attempts,
            steps,
            until_idle,
            run_dir,
            allow_unrouted,
            files,
        } => {
            // Before anything else: a SIGTERM that arrives while the conductor starts (a
            // deploy replacing a replica that just came up) must drain it, not kill it.
            let signals = Signals::new()?;
            conductor::failpoint::hit("run.starting");
            let messages = inbox::read_inputs(&files)?;
            let db = Db::connect(&db.database).await?;
            if !messages.is_empty() {
                inbox::submit(&db, &messages, "inbox").await?;
                tracing::info!(count = messages.len(), "submitted to the inbox");
            }
            let concurrency = concurrency.unwrap_or(match db.backend() {
                Backend::Sqlite => 1,
                Backend::Postgres => 4,
            });
            let mut opts = RunOptions {
                concurrency,
                poll_interval,
                heartbeat,
                max_attempts,
                ..RunOptions::default()
            };
            if !steps.is_empty() {
                opts.steps = steps;
            }
            let config = config.load()?;
            let serving = Serving {
                until_idle,
                allow_unrouted,
            };
            let started_ms = now_ms();
            serve(db.clone(), config, opts, serving, &run_dir, signals).await?;
            if until_idle {
                print!(
                    "{}",
                    history::render(&history::show(&db, &history::Subject::DecisionCounts).await?)
                );
                print!("{}", render_jobs(&jobs::list(&db, false, 50).await?));
                // Idle is not success: what failed for good during this run says so in the
                // exit code.
                let failed = workflows::engine::failed_runs(&db, started_ms, 100).await?;
                if !failed.is_empty() {
                    println!("\nWorkflow runs that failed for good:");
                    print!("{}", render_failed_runs(&failed));
                    db.close().await;
                    bail!(
                        "{} workflow run(s) failed for good during this run (listed above; `conductor quarantine` lists them too)",
                        failed.len()
                    );
                }
            }
            db.close().await;
        }
        Command::Submit { db, files } => {
            let messages = inbox::read_inputs(&files)?;
            let db = Db::connect(&db.database).await?;
            let n = inbox::submit(&db, &messages, "inbox").await?;
            eprintln!("submitted {n} message(s) to the inbox");
            db.close().await;
        }
        Command::Scenario(cmd) => return scenario_cmd(cmd).await,
        Command::History { db, subject } => {
            let db = open(&db).await?;
            let subject = match subject {
                HistoryCmd::Message { id } => history::Subject::Message(id),
                HistoryCmd::Ticket { key } => history::Subject::Ticket(key),
                HistoryCmd::Incident { id } => history::Subject::Incident(id),
                HistoryCmd::Job { id } => history::Subject::Job(id),
                HistoryCmd::Run { id } => history::Subject::Run(id),
                HistoryCmd::Recent { n } => history::Subject::Recent(n),
            };
            print!("{}", history::render(&history::show(&db, &subject).await?));
        }
        Command::Jobs { db, limit, json } => {
            let db = open(&db).await?;
            let list = jobs::list(&db, false, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", render_jobs(&list));
            }
        }
        Command::Quarantine { db } => {
            let db = open(&db).await?;
            print!("{}", render_jobs(&jobs::list(&db, true, i64::MAX).await?));
            let failed = workflows::engine::failed_runs(&db, 0, 100).await?;
            if !failed.is_empty() {
                println!("\nWorkflow runs that failed for good (conductor history run N):");
                print!("{}", render_failed_runs(&failed));
            }
        }
        Command::Retry { db, job } => {
            let db = open(&db).await?;
            let mut tx = db.begin().await?;
            let run = jobs::retry(&mut tx, job, now_ms()).await?;
            tx.commit().await?;
            println!("job {job}: new run {run}; `conductor run` picks it up");
        }
        Command::Demo { dir } => demo::run(&dir).await?,
        Command::Config { config, action } => config_cmd(&config, action)?,
        Command::Soak(args) => {
            let report = soak::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.render());
            }
            if !report.passed() {
                std::process::exit(1);
            }
        }
        Command::Drain { db } => {
            let db = open(&db).await?;
            gate::set(&db, true, &format!("cli:{}", whoami())).await?;
            println!(
                "gate closed: intake pauses on every replica; each exits once nothing is in flight"
            );
        }
        Command::Resume { db } => {
            let db = open(&db).await?;
            gate::set(&db, false, &format!("cli:{}", whoami())).await?;
            println!("gate open: intake resumes");
        }
        Command::Flags {
            db,
            config,
            json,
            action,
        } => {
            let settings = flags::Settings::from_config(&config.load()?)?;
            let db = open(&db).await?;
            flags_cmd(&db, &settings, action, json).await?;
        }
        Command::ShadowReport {
            db,
            candidate,
            last,
            since,
            json,
        } => {
            let db = open(&db).await?;
            let since_ms = since.map_or(0, |d| now_ms() - d.as_millis() as i64);
            let report =
                conductor::shadow::report(&db, candidate.as_deref(), since_ms, last).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
        }
        Command::Status { db, config, json } => {
            let settings = flags::Settings::from_config(&config.load()?)?;
            let db = open(&db).await?;
            let resolved = settings.resolve(&flags::read(&db).await?)?;
            let state = gate::state(&db).await?;
            let busy = gate::in_flight(&db).await?;
            let workers = jobs::live_workers(&db).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"gate": state, "flags": resolved, "in_flight": busy, "workers": workers})
                );
            } else {
                let since = if state.since_ms > 0 {
                    format!(
                        " since {} by {}",
                        conductor::domain::format_ms(state.since_ms),
                        state.by
                    )
                } else {
                    String::new()
                };
                println!(
                    "gate: {}{since}",
                    if state.closed { "closed" } else { "open" }
                );
                print!("{}", render_resolved(&resolved));
                println!(
                    "in flight: {} job step(s), {} worker(s)",
                    busy.job_steps, busy.workers
                );
                for w in workers {
                    println!(
                        "  {:<12} job {:<5} {:<11} {:<10} last heartbeat {}",
                        w.worker_id,
                        w.job_id,
                        w.state,
                        w.phase.unwrap_or_default(),
                        w.last_heartbeat_ms
                            .map(conductor::domain::format_ms)
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        Command::Bench(BenchCmd::Decide {
            events,
            postgres,
            clients,
            postgres_events,
            pipeline_events,
            statement_events,
        }) => {
            bench_decide(
                events,
                postgres,
                clients,
                postgres_events,
                pipeline_events,
                statement_events,
            )
            .await?;
        }
        Command::Bench(BenchCmd::Ingest(args)) => {
            let report = ingest_bench::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
        }
        Command::Bench(BenchCmd::Drain(args)) => {
            let report = drain_bench::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            let clean = report
                .rounds
                .iter()
                .all(|r| r.exit_code == Some(0) && r.jobs_succeeded == report.agents as i64);
            if !clean {
                bail!("a drain did not end cleanly (exit code or jobs above)");
            }
        }
    }
    Ok(())
}

fn config_cmd(arg: &ConfigArg, action: ConfigCmd) -> Result<()> {
    match action {
        ConfigCmd::Check { json } => {
            let shown = if arg.path.exists() {
                arg.path.display().to_string()
            } else {
                format!("defaults ({} not found)", arg.path.display())
            };
            let config = match arg.load() {
                Ok(c) => c,
                Err(e) => {
                    println!("Checking {shown}\n  FAILED: {e:#}");
                    bail!("configuration check failed");
                }
            };
            let findings = conductor::config::check::check(&config, true);
            if json {
                println!("{}", serde_json::to_string_pretty(&findings)?);
            } else {
                println!("Checking {shown}");
                for f in &findings {
                    let verdict = if f.ok { "SUCCESS" } else { "FAILED" };
                    println!("  {verdict:<7} {}: {}", f.subject, f.detail);
                }
            }
            let failed = findings.iter().filter(|f| !f.ok).count();
            if failed > 0 {
                bail!("configuration check failed: {failed} problem(s)");
            }
        }
        ConfigCmd::Show => {
            let rows = Config::explain(&arg.path, arg.explicit())?;
            let width = rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
            for (key, value, origin) in rows {
                println!("{key:<width$} = {value}    # {origin}");
            }
        }
    }
    Ok(())
}

/// Opens the database of a command that reads or steers an existing deployment: a missing
/// SQLite file is an error naming it, never a new empty database.
/// It does not migrate: the schema is `conductor run`'s to bring up to date, and a health
/// check or an operator's look during a deploy must not migrate under the running replicas.
async fn open(db: &DbArg) -> Result<Db> {
    Ok(Db::connect_only(&db.database).await?)
}

/// How `serve` runs: until idle or until drained; whether a missing route refuses the start.
#[derive(Debug, Clone, Copy)]
struct Serving {
    until_idle: bool,
    allow_unrouted: bool,
}

/// Runs the worker protocol and the step workers until idle, or until the shutdown gate is
/// closed and the drain is complete (gate.rs).
async fn serve(
    db: Db,
    mut config: Config,
    opts: RunOptions,
    serving: Serving,
    run_dir: &std::path::Path,
    signals: Signals,
) -> Result<()> {
    let until_idle = serving.until_idle;
    let (listener, bound) = grpc::bind(&config.grpc.listen).await?;
    if config.grpc.advertise.is_none() {
        config.grpc.advertise = Some(format!("http://{bound}"));
    }
    let (lease, handshake) = (config.jobs.lease, config.jobs.handshake_timeout);
    // The flags as this replica resolves them: a contradiction refuses to start, anything
    // merely odd is logged.
    let (resolved, warnings) = flags::Settings::from_config(&config)?
        .check(&flags::read(&db).await?)
        .context("refusing to start: the flags contradict each other")?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        incidents = resolved.incidents.value.as_str(),
        policy = %resolved.policy.value,
        candidate = resolved.candidate.value.as_deref().unwrap_or(flags::NONE),
        "flags"
    );
    let unrouted = config.unrouted_kinds(resolved.incidents.value == flags::Incidents::On);
    if !unrouted.is_empty() {
        let file = config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "conductor.toml (none was loaded; pass --config)".into());
        if !serving.allow_unrouted {
            bail!(
                "refusing to start: {} — add it to {file}, or pass --allow-unrouted",
                unrouted.join("; ")
            );
        }
        tracing::warn!(missing = %unrouted.join("; "), "starting without a route: such jobs will fail");
    }
    let startup = format!(
        "conductor {} starting: config {}, database {}, intake {}, spawner {}, forge {}",
        env!("CARGO_PKG_VERSION"),
        config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults (no file)".into()),
        db.describe(),
        match &config.sqs.queue_url {
            Some(q) => format!("inbox + SQS {q}"),
            None => "inbox".into(),
        },
        match config.worker.spawner {
            conductor::config::SpawnerKind::Local =>
                format!("local (work root {})", config.worker.work_root.display()),
            conductor::config::SpawnerKind::Ecs => format!("ecs (cluster {})", config.ecs.cluster),
        },
        match config.forge.kind {
            conductor::config::ForgeKind::Local => "local".to_owned(),
            conductor::config::ForgeKind::Github => format!("github {}", config.forge.base_url),
        },
    );
    let env = Arc::new(Env::load(db.clone(), config).await?);
    let queue = match &env.config.sqs.queue_url {
        Some(_) => {
            let sdk = conductor::aws::sdk_config(&env.config.aws).await;
            let queue = conductor::sqs::Queue::new(&sdk, &env.config.sqs)?;
            queue.check().await?;
            Some(queue)
        }
        None => None,
    };
    let extended = jobs::extend_live_attempts(
        &db,
        lease.as_millis() as i64,
        handshake.as_millis() as i64,
        now_ms(),
    )
    .await?;
    if extended > 0 {
        tracing::info!(
            extended,
            "gave live workers a fresh lease after the restart"
        );
    }
    // A starting conductor's gate file says false, and so does the gate: a deploy's new
    // replicas reopen intake that the old ones closed.
    gate::init_files(run_dir)?;
    gate::set(&db, false, &format!("start:{}", whoami())).await?;
    tracing::info!("{startup}, gate open");
    let (_watcher, file_rx) = gate::watch_file(run_dir)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, open_rx) = watch::channel(true);
    let running = runtime::IntakeRunning::default();
    let protocol = grpc::serve(env.clone(), listener, stop_rx.clone());
    let transport = queue.map(|queue| {
        tokio::spawn(conductor::sqs::run(
            queue,
            db.clone(),
            stop_rx.clone(),
            open_rx.clone(),
            Default::default(),
        ))
    });
    let pool = tokio::spawn(runtime::run_counted(
        env,
        opts,
        stop_rx,
        open_rx,
        running.clone(),
    ));
    let reason = supervise(&db, run_dir, until_idle, file_rx, open_tx, running, signals).await?;
    tracing::info!(reason, "stopping: waiting for in-flight steps");
    let _ = stop_tx.send(true);
    if let Some(transport) = transport {
        transport.await.context("SQS transport panicked")?;
    }
    pool.await.context("worker pool panicked")??;
    protocol.await.context("worker protocol panicked")??;
    Ok(())
}

fn whoami() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{host}:{}", std::process::id())
}

/// Follows the gate (the file, the database flag, signals) until it is time to stop. The
/// database may be unreachable for a while (a restart, a failover): the gate then keeps its
/// last state, a signal still closes this process's intake, and a file change waits to be
/// written.
async fn supervise(
    db: &Db,
    run_dir: &std::path::Path,
    until_idle: bool,
    mut file_rx: tokio::sync::mpsc::UnboundedReceiver<bool>,
    open_tx: watch::Sender<bool>,
    intake_running: runtime::IntakeRunning,
    Signals { mut term, mut int }: Signals,
) -> Result<&'static str> {
    let mut gate = GateFollower::default();
    let mut outage = false;
    loop {
        tokio::select! {
            _ = term.recv() => on_signal("SIGTERM", &mut gate.local_closed),
            _ = int.recv() => on_signal("SIGINT", &mut gate.local_closed),
            Some(closed) = file_rx.recv() => gate.file_says = Some(closed),
            // While draining, the ready file follows the last job's end closely.
            _ = tokio::time::sleep(Duration::from_millis(if gate.announced { 20 } else { 100 })) => {}
        }
        if gate.local_closed {
            close_intake(&open_tx, true);
        }
        // A database that takes no writes (a full disk, read-only) closes intake until a
        // write succeeds again; the steps in flight wait for it themselves.
        gate.storage_check(db, &open_tx).await;
        match gate.follow(db, until_idle, &open_tx, &intake_running).await {
            Ok(done) => {
                if outage {
                    tracing::info!("database reachable again");
                    outage = false;
                }
                if let Some(reason) = done {
                    if reason == "drained" {
                        let ready = gate::write_ready(run_dir)?;
                        tracing::info!(file = %ready.display(), "drained: ready for a safe shutdown");
                    }
                    return Ok(reason);
                }
            }
            Err(e) if !outage => {
                tracing::warn!(error = %e, "cannot read the gate from the database; keeping its last state");
                outage = true;
            }
            Err(_) => {}
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment `conductor run` starts (a signal that arrives
/// before the gate is followed waits for it).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Sets the intake switch; whether it changed.
fn close_intake(open_tx: &watch::Sender<bool>, closed: bool) -> bool {
    open_tx.send_if_modified(|open| {
        let changed = *open == closed;
        *open = !closed;
        changed
    })
}

/// What [`supervise`] knows of the gate between ticks.
#[derive(Default)]
struct GateFollower {
    /// A signal closed this process's gate (not the shared one).
    local_closed: bool,
    /// The gate file's latest word, not yet written to the database.
    file_says: Option<bool>,
    /// "gate closed" has been logged for the current closing.
    announced: bool,
    /// Intake is closed because the database takes no writes; when it was last probed.
    storage_closed: Option<std::time::Instant>,
}

impl GateFollower {
    /// Follows storage trouble: closes intake (saying why, once) while the database takes no
    /// writes, probes it every second, and hands intake back to the gate once a write
    /// succeeds. Whether intake is held closed for it now.
    async fn storage_check(&mut self, db: &Db, open_tx: &watch::Sender<bool>) -> bool {
        use conductor::db::storage;
        match (self.storage_closed, storage::in_trouble()) {
            (None, None) => false,
            (None, Some(cause)) => {
                tracing::error!(cause = %cause, "the database cannot store anything (disk or database full, or read-only): intake stopped; nothing is lost, and it resumes once writes succeed");
                close_intake(open_tx, true);
                self.storage_closed = Some(std::time::Instant::now());
                true
            }
            (Some(last), _) if last.elapsed() < Duration::from_secs(1) => true,
            (Some(_), _) => match storage::probe(db).await {
                Ok(()) => {
                    tracing::info!("the database takes writes again: intake resumes");
                    self.storage_closed = None;
                    false
                }
                Err(_) => {
                    self.storage_closed = Some(std::time::Instant::now());
                    true
                }
            },
        }
    }

    /// One look at the database: applies the file's word, opens or closes intake, and says
    /// whether it is time to stop ("drained", or "idle" under `--until-idle`).
    async fn follow(
        &mut self,
        db: &Db,
        until_idle: bool,
        open_tx: &watch::Sender<bool>,
        intake_running: &runtime::IntakeRunning,
    ) -> Result<Option<&'static str>, conductor::error::Error> {
        if let Some(closed) = self.file_says {
            // One write raises several events: act when the file disagrees with the gate.
            if gate::state(db).await?.closed != closed {
                gate::set(db, closed, &format!("file:{}", whoami())).await?;
            }
            self.file_says = None;
        }
        let closed = self.local_closed || gate::state(db).await?.closed;
        close_intake(open_tx, closed || self.storage_closed.is_some());
        if !closed {
            if self.announced {
                tracing::info!("gate reopened: intake resumes");
                self.announced = false;
            }
            if until_idle && workflows::engine::runs_in_flight(db).await? == 0 {
                return Ok(Some("idle"));
            }
            return Ok(None);
        }
        let intake = intake_running.load(std::sync::atomic::Ordering::SeqCst);
        let busy = gate::in_flight(db).await?;
        if !self.announced {
            tracing::info!(
                job_steps = busy.job_steps,
                workers = busy.workers,
                "gate closed: intake paused, draining"
            );
            self.announced = true;
        }
        Ok((busy.is_empty() && intake == 0).then_some("drained"))
    }
}

fn on_signal(name: &str, local_closed: &mut bool) {
    if *local_closed {
        tracing::warn!(
            signal = name,
            "already draining; only SIGKILL skips the drain"
        );
    } else {
        tracing::info!(signal = name, "closing this conductor's gate; draining");
        *local_closed = true;
    }
}

use conductor::domain::escape_controls;

fn render_failed_runs(runs: &[workflows::engine::FailedRun]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for r in runs {
        let _ = writeln!(
            out,
            "  run {:<6} {:<8} step {:<8} {}",
            r.run_id,
            r.workflow,
            r.step.as_deref().unwrap_or("-"),
            escape_controls(r.error.as_deref().unwrap_or(""))
        );
    }
    out
}

fn render_jobs(list: &[jobs::JobLine]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5} {:<8} {:<14} {:<12} {:>8}  {:<44} result",
        "job", "kind", "subject", "state", "attempts", "branch"
    );
    for j in list {
        let result = j
            .pr_url
            .clone()
            .or_else(|| j.issue_url.clone())
            .or_else(|| j.outcome.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:>5} {:<8} {:<14} {:<12} {:>8}  {:<44} {}",
            j.id,
            j.kind,
            // What an agent or a sender wrote is printed with its control characters escaped.
            escape_controls(&j.subject),
            j.state,
            j.attempts,
            escape_controls(&j.branch.clone().unwrap_or_default()),
            escape_controls(&result)
        );
    }
    out
}

async fn scenario_cmd(cmd: ScenarioCmd) -> Result<()> {
    match cmd {
        ScenarioCmd::Replay {
            events,
            from_database,
            database,
            policy,
            batch,
            store,
            json,
        } => {
            let sched = policy.scheduling()?;
            let (db, _guard) = match database {
                Some(url) => (Db::connect(&url).await?, None),
                None => {
                    let (db, dir) = scenario::temp_sqlite().await?;
                    (db, Some(dir))
                }
            };
            if let Some(source) = from_database {
                let src = Db::connect_only(&source).await?;
                let stored = scenario::stored_messages(&src).await?;
                let messages: Vec<_> = stored.iter().map(|(m, _)| m.clone()).collect();
                let report = replay::replay_with(&db, &sched, &messages, batch, store).await?;
                let diffs = scenario::differences(&stored, &report);
                let shadow = match &sched.candidate {
                    Some(_) => Some(conductor::shadow::report(&db, None, 0, 10).await?),
                    None => None,
                };
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"summary": report.summary, "differences": diffs, "shadow": shadow})
                    );
                } else {
                    if let Some(shadow) = &shadow {
                        println!("{}", shadow.render());
                    }
                    print!("{}", replay::render_table(&report));
                    println!(
                        "\n{} of {} stored decisions differ",
                        diffs.len(),
                        stored.len()
                    );
                    for d in &diffs {
                        println!(
                            "  {}: stored {}, replayed {}",
                            d.message_id,
                            d.stored.as_deref().unwrap_or("(none)"),
                            d.replayed
                        );
                    }
                }
                return Ok(());
            }
            let path = events.expect("clap requires --events without --from-database");
            let messages = inbox::read_jsonl(&path)?;
            let report = replay::replay_with(&db, &sched, &messages, batch, store).await?;
            let shadow = match &sched.candidate {
                Some(_) => Some(conductor::shadow::report(&db, None, 0, 10).await?),
                None => None,
            };
            if json {
                let mut doc = serde_json::to_value(&report)?;
                if let Some(shadow) = &shadow {
                    doc["shadow"] = serde_json::to_value(shadow)?;
                }
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", replay::render_table(&report));
                if let Some(shadow) = &shadow {
                    print!("\n{}", shadow.render());
                }
            }
            db.close().await;
        }
        ScenarioCmd::Run { paths, json } => {
            let mut failed = 0;
            for path in &paths {
                let (db, _dir) = scenario::temp_sqlite().await?;
                let outcome = scenario::file::run_file(path, &db).await?;
                db.close().await;
                let status = if outcome.failures.is_empty() {
                    "ok"
                } else {
                    "FAILED"
                };
                println!("{status:<6} {} — {}", path.display(), outcome.description);
                for f in &outcome.failures {
                    println!("         {f}");
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&outcome.report)?);
                }
                failed += usize::from(!outcome.failures.is_empty());
            }
            println!("{} passed, {} failed", paths.len() - failed, failed);
            if failed > 0 {
                bail!("{failed} scenario(s) failed their expectations");
            }
        }
        ScenarioCmd::Gen { out, spec } => {
            let messages = gen::generate(&spec).map_err(anyhow::Error::msg)?;
            let text = gen::to_jsonl(&messages);
            match out {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("wrote {} messages to {}", messages.len(), path.display());
                }
                None => print!("{text}"),
            }
        }
    }
    Ok(())
}

async fn bench_decide(
    events: usize,
    postgres: Option<String>,
    clients: usize,
    postgres_events: usize,
    pipeline_events: usize,
    statement_events: usize,
) -> Result<()> {
    let stream = bench::stream(events.max(postgres_events).max(pipeline_events));
    let print = |f: &bench::Figure| {
        println!(
            "{:<60} {:>8} events {:>8.2} s {:>10.0} events/s",
            f.name, f.events, f.seconds, f.per_second
        )
    };
    let slice = 10_000;
    // The write-behind store is what a replay uses on SQLite; the statement store (the live
    // path's queries one by one) is measured beside it on a shorter stream for comparison.
    // The statement store again with a candidate in shadow: what shadow evaluation adds to
    // every decision.
    let candidate = Policy::inline(conductor::policy::PolicySpec::parse("window=30m")?);
    for (mode, n, candidate) in [
        (replay::StoreMode::WriteBehind, events, None),
        (
            replay::StoreMode::Statements,
            events.min(statement_events),
            None,
        ),
        (
            replay::StoreMode::Statements,
            events.min(statement_events),
            Some(candidate),
        ),
    ] {
        if n == 0 {
            continue;
        }
        let figures =
            bench::decide_sqlite(&stream[..n], replay::DEFAULT_BATCH, slice, mode, candidate)
                .await?;
        print(&figures[0]);
        if let Some(early) = figures.get(2) {
            print(early);
        }
        if let Some(late) = figures.last().filter(|_| figures.len() > 3) {
            print(late);
        }
    }
    if let Some(url) = &postgres {
        let candidate = Policy::inline(conductor::policy::PolicySpec::parse("window=30m")?);
        for candidate in [None, Some(candidate)] {
            print(
                &bench::decide_postgres(url, &stream[..postgres_events], clients, candidate)
                    .await?,
            );
        }
    }
    // The live pipeline, then again with a candidate in shadow.
    for candidate in [None, Some("window=30m")]
        .into_iter()
        .filter(|_| pipeline_events > 0)
    {
        let (db, _dir) = scenario::temp_sqlite().await?;
        let messages = &stream[..pipeline_events];
        print(&bench::pipeline(db, messages, "sqlite", candidate).await?);
        if let Some(url) = &postgres {
            let (db, _, cleanup) = bench::fresh_postgres(url, "conductor_bench_pipeline").await?;
            print(&bench::pipeline(db.clone(), messages, "postgres", candidate).await?);
            db.close().await;
            cleanup.await?;
        }
    }
    Ok(())
}

/// `conductor flags`: show, set, or list the history.
async fn flags_cmd(
    db: &Db,
    settings: &flags::Settings,
    action: Option<FlagsCmd>,
    json: bool,
) -> Result<()> {
    match action {
        None => {
            let stored = flags::read(db).await?;
            let (resolved, warnings) = match settings.check(&stored) {
                Ok(ok) => ok,
                Err(e) => (settings.resolve(&stored)?, vec![format!("REFUSED: {e}")]),
            };
            let policies: Vec<_> = settings
                .catalog
                .named()
                .map(|(name, spec)| serde_json::json!({"name": name, "spec": spec.to_string()}))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "resolved": resolved, "stored": stored, "policies": policies, "warnings": warnings
                    }))?
                );
                return Ok(());
            }
            print!("{}", render_resolved(&resolved));
            for name in flags::NAMES {
                if let Some(s) = stored.get(*name) {
                    println!(
                        "  database {name} = {} (set {} by {})",
                        s.value,
                        conductor::domain::format_ms(s.updated_ms),
                        s.updated_by
                    );
                }
            }
            println!("policies:");
            for (name, spec) in settings.catalog.named() {
                println!("  {name:<16} {spec}");
            }
            for w in warnings {
                println!("warning: {w}");
            }
        }
        Some(FlagsCmd::Set { pairs, by }) => {
            let by = by.unwrap_or_else(|| format!("cli:{}", whoami()));
            let (changes, warnings) = flags::set_many(db, settings, &pairs, &by).await?;
            for (name, value) in &pairs {
                match changes.iter().find(|c| &c.name == name) {
                    Some(c) => println!(
                        "{name}: {} -> {}",
                        c.old_value.as_deref().unwrap_or("(unset)"),
                        c.new_value
                    ),
                    None => println!("{name}: already {value}"),
                }
            }
            if changes
                .iter()
                .any(|c| c.name == flags::CANDIDATE && c.new_value != flags::NONE)
            {
                println!("the candidate starts from empty shadow state");
            }
            for w in warnings {
                println!("warning: {w}");
            }
        }
        Some(FlagsCmd::History { n }) => {
            let changes = flags::history(db, n).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&changes)?);
                return Ok(());
            }
            for c in changes {
                println!(
                    "{}  {:<10} {} -> {}  by {}",
                    conductor::domain::format_ms(c.changed_ms),
                    c.name,
                    c.old_value.as_deref().unwrap_or("(unset)"),
                    c.new_value,
                    c.changed_by
                );
            }
        }
    }
    Ok(())
}

fn render_resolved(r: &flags::Resolved) -> String {
    let source = |s: flags::Source| match s {
        flags::Source::Config => "pinned by configuration",
        flags::Source::Database => "database",
        flags::Source::Default => "default",
    };
    format!(
        "incidents: {} ({})\npolicy: {} ({})\ncandidate: {} ({})\n",
        r.incidents.value.as_str(),
        source(r.incidents.source),
        r.policy.value,
        source(r.policy.source),
        r.candidate.value.as_deref().unwrap_or(flags::NONE),
        source(r.candidate.source)
    )
}
