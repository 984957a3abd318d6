//! The command line's shape: every command, argument and flag (clap derive).

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use conductor::{
    config::Config,
    scenario::{gen, replay},
    scheduling::flags,
    scheduling::policy::Policy,
};

use super::{drain_bench, ingest_bench, soak};

#[derive(Parser)]
#[command(
    name = "conductor",
    version,
    about = "Schedules and supervises AI coding agents for tickets and AWS incidents"
)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "CONDUCTOR_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Clone)]
pub struct DbArg {
    /// Database URL: sqlite:PATH (embedded default) or postgres://...
    // Global, so `conductor flags set X --database D` works as well as `flags --database D set X`.
    #[arg(
        long,
        global = true,
        env = "CONDUCTOR_DATABASE_URL",
        default_value = "sqlite:conductor.db"
    )]
    pub database: String,
}

#[derive(clap::Args, Clone)]
pub struct ConfigArg {
    /// Job settings: routing, timings, worker, forge (see conductor.example.toml). Used if
    /// present; CONDUCTOR_<SECTION>__<KEY> variables override it.
    #[arg(
        long = "config",
        global = true,
        env = "CONDUCTOR_CONFIG",
        default_value = "conductor.toml"
    )]
    pub path: PathBuf,
}

impl ConfigArg {
    /// Whether the file was named (by --config or CONDUCTOR_CONFIG): then it must exist.
    pub fn explicit(&self) -> bool {
        std::env::var_os("CONDUCTOR_CONFIG").is_some()
            || self.path != std::path::Path::new("conductor.toml")
    }

    pub fn load(&self) -> Result<Config> {
        Ok(Config::load(&self.path, self.explicit())?)
    }
}

#[derive(clap::Args, Clone)]
pub struct PolicyArg {
    /// Alarm chaining window (inclusive) of the built-in policy.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, conflicts_with = "policy")]
    pub window: Duration,
    /// The authoritative policy: `default`, a [policies.NAME] of --config, or an inline spec
    /// such as `window=30m,max_age=6h,group=account+alarm` [default: the built-in, --window].
    #[arg(long)]
    pub policy: Option<String>,
    /// A candidate policy to evaluate in shadow beside it (named or inline, as --policy); the
    /// verdicts follow the decisions.
    #[arg(long)]
    pub candidate: Option<String>,
    /// What alarms may do: off, shadow or on.
    #[arg(long, default_value = "on", value_parser = parse_incidents)]
    pub incidents: flags::Incidents,
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn parse_incidents(text: &str) -> Result<flags::Incidents, String> {
    flags::Incidents::parse(text).map_err(|e| e.to_string())
}

impl PolicyArg {
    /// The replay's scheduling, checked as `conductor run` checks the flags.
    pub fn scheduling(&self) -> Result<flags::Scheduling> {
        let config = self.config.load()?;
        let settings = flags::Settings::from_config(config.flag_config())?;
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
pub enum Command {
    /// Run the worker pool: every step of every workflow, until SIGTERM/SIGINT (or idle).
    Run(RunArgs),
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
        /// One JSON document: each section's title and rows (column → value; empty is null).
        #[arg(long, global = true)]
        json: bool,
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
    /// Pause intake on every replica, for as long as it takes: nothing new is decided or
    /// started, running jobs go on, no process exits, and no start or deploy lifts it.
    Pause {
        #[command(flatten)]
        db: DbArg,
    },
    /// Lift `conductor pause`: intake resumes on every replica (unless the gate is closed).
    Unpause {
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
    /// Serve the web console, `/metrics` and `/readyz` for any database (the demo's, a copy of
    /// production) until Ctrl-C. Read-only unless the operator token is set (see `[http]`).
    Console {
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        config: ConfigArg,
        /// Where to listen (default: `http.listen` of the configuration, else 127.0.0.1:7470;
        /// port 0 picks a free one). The address is printed on the first line.
        #[arg(long)]
        listen: Option<String>,
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
        /// One JSON document: the quarantined jobs and the runs that failed for good.
        #[arg(long)]
        json: bool,
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
    /// Print a shell completion script: `conductor completions bash > /etc/bash_completion.d/conductor`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Check or show the configuration `conductor run` would use.
    Config {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// Which `[[routes]]` entry messages take, and why.
    Routes {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: RoutesCmd,
    },
}

#[derive(Subcommand)]
pub enum RoutesCmd {
    /// For each message file (one JSON message, as `submit` takes), the route it takes: the
    /// routes tried in order, what matched or did not, the repository and environment.
    /// Exits 1 when a message takes no route or is not a ticket or alarm.
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON document per message.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Validate the configuration: keys and values, routes for every kind of job, paths, the
    /// worker and agent programs, the forge token, AWS settings. Exits 1 on any failure.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration, each value with where it came from (default, the
    /// file, or an environment variable); passwords in URLs are hidden.
    Show {
        /// One JSON document: `[{"key", "value", "origin"}]`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ScenarioCmd {
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
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// After the summary, list every message's decision (one line each).
        #[arg(long)]
        decisions: bool,
    },
    /// Run scenario files; exits non-zero if any expectation fails.
    Run {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print one JSON document: every scenario with its failures and full report.
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
pub enum FlagsCmd {
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

pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

#[derive(Subcommand)]
pub enum HistoryCmd {
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
    /// Agents started, attempts and agent time by AWS account and UTC day (tickets: `-`).
    AgentTime {
        /// Only this account.
        account: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Decision throughput on SQLite (and Postgres if given), per-event cost at 10k vs 200k
    /// stored events, and the rate through the full apalis pipeline.
    Decide {
        /// Events for the SQLite replay (slices of 10,000 are timed separately).
        #[arg(long, default_value_t = 210_000)]
        events: usize,
        /// Postgres server to create a scratch database on (e.g. postgres://127.0.0.1:5432/postgres).
        #[arg(long)]
        postgres: Option<String>,
        /// Concurrent deciders on Postgres, one run per count (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "4,8")]
        clients: Vec<usize>,
        /// Events for the Postgres run.
        #[arg(long, default_value_t = 50_000)]
        postgres_events: usize,
        /// Events through the full apalis pipeline (per backend).
        #[arg(long, default_value_t = 5_000)]
        pipeline_events: usize,
        /// Events for the SQLite replay through the statement-by-statement store.
        #[arg(long, default_value_t = 50_000)]
        statement_events: usize,
        /// Messages for the inbox-to-decision latency run (per backend), submitted one at a
        /// time at --rate a second while the pipeline runs.
        #[arg(long, default_value_t = 200)]
        latency_messages: usize,
        /// Messages per second in the latency run.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// With --postgres: measure the limits beside Conductor in the same run — the pgbench
        /// reference script at each client count, and every peer queue script under
        /// DOCS/peers/ (graphile-worker, pgqueuer; each installs its pinned peer into a scratch
        /// directory) — and print Conductor's ratios to them.
        #[arg(long)]
        peers: bool,
        /// Jobs each peer queue runs.
        #[arg(long, default_value_t = 20_000)]
        peer_jobs: usize,
        /// Where the pgbench scripts and peers/ are.
        #[arg(long, default_value = "docs/bench")]
        docs: std::path::PathBuf,
        /// One JSON document: every figure measured.
        #[arg(long)]
        json: bool,
    },
    /// How fast the shutdown gate acts: gate closed to intake stopped, last agent's report to
    /// the ready file, and the whole drain, over real `conductor run` children.
    Drain(drain_bench::DrainArgs),
    /// The SQS transport into decisions: messages per second from a full queue, and the
    /// latency from SendMessage to the committed decision (p50, p99), against any
    /// SQS-compatible endpoint.
    Ingest(ingest_bench::IngestArgs),
}

/// `conductor run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArg,
    #[command(flatten)]
    pub config: ConfigArg,
    /// Tasks each step queue runs at once [default: 1 on SQLite, 8 on Postgres].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How often an idle SQLite worker polls its queue.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// apalis heartbeat; a dead process's tasks are re-queued after three missed ones. On
    /// SQLite an idle step queue was seen to miss a newly queued task until its next
    /// heartbeat, so keep it short there.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// Give a step up (and fail its run) after this many attempts.
    #[arg(long, default_value_t = 5)]
    pub max_attempts: i64,
    /// Serve only these step queues (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<String>,
    /// Exit once no workflow run is in flight, printing the decisions on record.
    #[arg(long)]
    pub until_idle: bool,
    /// Where the shutdown gate's files live: IS_CONDUCTOR_SHUTTING_DOWN (watched: write
    /// true to drain, false to reopen) and CONDUCTOR_READY_FOR_SAFE_SHUTDOWN.
    #[arg(long, env = "CONDUCTOR_RUN_DIR", default_value = ".")]
    pub run_dir: PathBuf,
    /// Start even when a kind of job that can start has no route (its jobs then fail
    /// "no route" and its tickets are used up).
    #[arg(long)]
    pub allow_unrouted: bool,
    /// Messages to submit to the inbox before starting (JSON or JSONL files, as `submit`).
    pub files: Vec<PathBuf>,
}
