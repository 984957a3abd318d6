//! `conductor soak`: crash safety under abuse (docs/design.md section 6). Several `conductor run`
//! replicas share one database; a generated stream goes into the real inbox in batches while
//! replicas are SIGKILLed and restarted at random moments; the scripted agent does real work
//! in real bare repositories. At the end, what was spawned and opened is compared with a
//! sequential replay of the same stream, and the run fails on any lost message, duplicate
//! spawn, extra attempt, duplicate pull request or orphaned worker process.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use conductor::{
    config::{Config, ForgeKind, Route},
    db::Db,
    intake::inbox,
    jobs::local_git,
    scenario::{
        gen,
        replay::{self, StoreMode},
    },
    scheduling::domain::RawMessage,
    scheduling::policy::Policy,
    with_pool,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

const AGENT: &str = include_str!("../../worker/agents/scripted.sh");
const REPOS: usize = 4;
const ACCOUNTS: usize = 4;

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// An empty database the replicas share (Postgres for several replicas).
    #[arg(long, env = "CONDUCTOR_DATABASE_URL")]
    pub database: String,
    /// Messages in the generated stream.
    #[arg(long, default_value_t = 500)]
    pub messages: usize,
    /// A replay file (JSONL) to feed instead of the generated stream: any traffic, late
    /// alarms and junk included. Every job routes to one default repository then.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// `incidents.settle` of the replicas: how long a new incident's job waits for late
    /// alarms before its agent starts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// SIGKILLs (each followed by a restart of the killed replica).
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where repositories, work directories and replica logs go.
    #[arg(long, default_value = "conductor-soak")]
    pub dir: PathBuf,
    /// Give up waiting for the jobs to finish after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(long)]
    pub json: bool,
}

/// What a soak found.
#[derive(Debug, Default, Serialize)]
pub struct SoakReport {
    pub messages: usize,
    pub unique_messages: usize,
    pub replicas: usize,
    pub kills: usize,
    pub seconds: f64,
    pub expected_ticket_spawns: usize,
    pub expected_incident_spawns: usize,
    /// Final incidents plus ticket spawns of the sequential replay: the agents the stream
    /// deserves.
    pub expected_agents: usize,
    /// Workers started for attempts (`job_attempts` rows): at most `expected_agents`.
    pub agents_started: i64,
    /// Stored messages without a decision.
    pub undecided: i64,
    /// Incident jobs ended as `merged` before their agent started.
    pub cancelled_merged: i64,
    pub jobs: i64,
    pub jobs_succeeded: i64,
    pub pull_requests: i64,
    /// Worker processes the replicas started (their logs): more than the attempts when a
    /// replica died between starting one and recording it; the protocol lets only one of an
    /// attempt's processes work.
    pub workers_started: i64,
    pub lost_messages: i64,
    pub duplicate_spawns: i64,
    pub extra_attempts: i64,
    /// Why each failed attempt failed (`worker id: reason`): what an extra attempt was for.
    pub failed_attempts: Vec<String>,
    pub duplicate_pull_requests: i64,
    /// Each job that did not succeed and was not merged: its state, outcome, and the step its
    /// run failed at with the error (what to look at when `jobs_succeeded` falls short).
    pub jobs_not_succeeded: Vec<String>,
    pub orphaned_workers: usize,
    /// Ticket keys and per-account incident counts that differ from the sequential replay.
    pub mismatches: Vec<String>,
    pub replica_exit_codes: Vec<Option<i32>>,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.lost_messages == 0
            && self.undecided == 0
            && self.agents_started <= self.expected_agents as i64
            && self.duplicate_spawns == 0
            && self.extra_attempts == 0
            && self.duplicate_pull_requests == 0
            && self.orphaned_workers == 0
            && self.mismatches.is_empty()
            && self.jobs_succeeded + self.cancelled_merged == self.jobs
            && self.pull_requests == self.jobs_succeeded
            && self.replica_exit_codes.iter().all(|c| *c == Some(0))
    }

    pub fn render(&self) -> String {
        format!(
            "soak: {} messages ({} unique ids), {} replicas, {} kills, {:.1}s\n  \
             expected (sequential replay): {} ticket spawns, {} incident spawns, {} agents\n  \
             observed: {} jobs ({} succeeded, {} merged before an agent started), {} agents started, {} pull requests, {} worker processes started\n  \
             lost messages {} | undecided {} | duplicate spawns {} | extra attempts {} | duplicate pull requests {} | orphaned workers {} | mismatches {}\n  \
             replica exit codes after the final drain: {:?}\n{}{}",
            self.messages,
            self.unique_messages,
            self.replicas,
            self.kills,
            self.seconds,
            self.expected_ticket_spawns,
            self.expected_incident_spawns,
            self.expected_agents,
            self.jobs,
            self.jobs_succeeded,
            self.cancelled_merged,
            self.agents_started,
            self.pull_requests,
            self.workers_started,
            self.lost_messages,
            self.undecided,
            self.duplicate_spawns,
            self.extra_attempts,
            self.duplicate_pull_requests,
            self.orphaned_workers,
            self.mismatches.len(),
            self.replica_exit_codes,
            self.failed_attempts
                .iter()
                .map(|f| format!("  failed attempt {f}\n"))
                .chain(self.jobs_not_succeeded.iter().map(|j| format!("  not succeeded: {j}\n")))
                .collect::<String>(),
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// The stream: tickets (each key created once, then updated or redelivered as a bare issue)
/// over `REPOS` projects, alarm bursts per account (two bursts three hours apart, so the
/// incidents cannot depend on arrival order), malformed bodies and transport redeliveries,
/// merged in a seeded random order that keeps each ticket's and each account's own order.
pub fn generate(messages: usize, seed: u64) -> Vec<RawMessage> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let id = |n: usize| format!("soak-{seed}-{n:06}");
    let (n_tickets, n_alarms, n_junk) = (messages * 60 / 100, messages * 36 / 100, messages / 50);
    let unique = (messages / 12).max(REPOS);
    let mut tickets = Vec::new();
    for i in 0..n_tickets {
        let k = if i < unique {
            i
        } else {
            rng.random_range(0..unique)
        };
        let key = format!("SOAK{}-{}", k % REPOS, k + 1);
        let event = if i < unique {
            Some("jira:issue_created")
        } else if rng.random_bool(0.5) {
            Some("jira:issue_updated")
        } else {
            None
        };
        tickets.push(gen::ticket(&key, &format!("soak ticket {key}"), event));
    }
    let base = 1_767_225_600_000i64; // 2026-01-01
    let mut alarms = Vec::new();
    for i in 0..n_alarms {
        let acct = i % ACCOUNTS;
        let burst = (i / ACCOUNTS) % 2;
        let at = base + burst as i64 * 3 * 3_600_000 + (i as i64 / 8) * 20_000;
        let account = format!("{:012}", 200_000_000_000u64 + acct as u64);
        alarms.push((
            acct,
            at,
            gen::eventbridge_alarm(&format!("ev-{seed}-{i}"), &account, "soak-cpu", "ALARM", at),
        ));
    }
    alarms.sort_by_key(|(acct, at, _)| (*at, *acct));
    let mut alarms: std::collections::VecDeque<String> =
        alarms.into_iter().map(|(_, _, b)| b).collect();
    let mut tickets: std::collections::VecDeque<String> = tickets.into();
    let mut junk: std::collections::VecDeque<String> = (0..n_junk)
        .map(|i| format!("{{\"not\": \"a message\", \"n\": {i}}}"))
        .collect();
    let mut out: Vec<RawMessage> = Vec::new();
    while out.len() < messages {
        let roll = rng.random_range(0..100);
        let body = if roll < 3 && !out.is_empty() {
            // A transport redelivery: the same id and body again.
            let again = out[rng.random_range(0..out.len())].clone();
            out.push(again);
            continue;
        } else if roll < 60 {
            tickets.pop_front()
        } else if roll < 97 {
            alarms.pop_front()
        } else {
            junk.pop_front()
        };
        let body = match body {
            Some(b) => b,
            None => match tickets
                .pop_front()
                .or_else(|| alarms.pop_front())
                .or_else(|| junk.pop_front())
            {
                Some(b) => b,
                None => break,
            },
        };
        let n = out.len();
        out.push(RawMessage {
            transport_id: id(n),
            body,
            raw: None,
        });
    }
    out
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Replica {
    port: u16,
    run_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn start(&mut self, exe: &Path, database: &str, config: &Path) -> Result<()> {
        std::fs::create_dir_all(&self.run_dir)?;
        // The replica writes its gate file once it catches SIGTERM: see `until_started`.
        let _ = std::fs::remove_file(self.run_dir.join(conductor::intake::gate::GATE_FILE));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(exe)
            .args([
                "run",
                "--database",
                database,
                "--heartbeat",
                "1s",
                "--config",
            ])
            .arg(config)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .env("CONDUCTOR_GRPC__LISTEN", format!("127.0.0.1:{}", self.port))
            // `workers_started` counts the spawner's "worker started" lines, whatever the level.
            .env(
                "CONDUCTOR_LOG",
                format!(
                    "{},conductor::jobs::spawner=info",
                    std::env::var("CONDUCTOR_LOG").unwrap_or_else(|_| "info".into())
                ),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a conductor replica")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the replica has written its gate file, which it does after installing its
    /// SIGTERM handler: a SIGTERM sent earlier, in the milliseconds between exec and that
    /// handler, would kill it the default way instead of draining it (a deploy's SIGTERM
    /// comes long after a start, so only a soak that restarts replicas meets that window).
    async fn until_started(&mut self) -> Result<()> {
        let gate = self.run_dir.join(conductor::intake::gate::GATE_FILE);
        let until = Instant::now() + Duration::from_secs(60);
        while !gate.exists() && Instant::now() < until {
            if let Some(c) = &mut self.child {
                if c.try_wait()?.is_some() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Live processes that belong to this soak's workers or agents (by their environment).
fn workers_alive(work_root: &Path) -> Vec<i32> {
    let want = format!("WORKER_DIR={}", work_root.display());
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        let in_env = std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| {
                env.split(|b| *b == 0)
                    .any(|kv| kv.starts_with(want.as_bytes()))
            })
            .unwrap_or(false);
        let in_cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|cwd| cwd.starts_with(work_root))
            .unwrap_or(false);
        if !zombie && (in_env || in_cwd) {
            found.push(pid);
        }
    }
    found
}

/// One integer from a query (shared by the soak and the drain bench).
pub(crate) async fn scalar(db: &Db, sql: &'static str) -> Result<i64> {
    Ok(with_pool!(db, |p| sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(p)
        .await?))
}

/// What a sequential replay of the stream decides.
struct Expected {
    /// Ticket keys that spawn.
    tickets: BTreeSet<String>,
    /// Incident spawns per account.
    incident_spawns: BTreeMap<String, i64>,
    /// Incidents per account once every merge is done.
    final_incidents: BTreeMap<String, i64>,
}

/// Sequential replay of the stream.
async fn expected(dir: &Path, stream: &[RawMessage]) -> Result<Expected> {
    let path = dir.join("expected.db");
    let _ = std::fs::remove_file(&path);
    let db = Db::connect(&format!("sqlite:{}", path.display())).await?;
    let lines = replay::decide_all(
        &db,
        &conductor::scheduling::flags::Scheduling::only(Policy::default()),
        stream,
        replay::DEFAULT_BATCH,
        StoreMode::Auto,
    )
    .await?;
    let final_incidents: BTreeMap<String, i64> = with_pool!(&db, |p| {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT account, COUNT(*) FROM incidents WHERE merged_into IS NULL GROUP BY account",
        )
        .fetch_all(p)
        .await?
    })
    .into_iter()
    .collect();
    db.close().await;
    let mut tickets = BTreeSet::new();
    let mut incidents: BTreeMap<String, i64> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.decision == "spawn") {
        match (&l.ticket_key, &l.account) {
            (Some(key), _) => {
                tickets.insert(key.clone());
            }
            (None, Some(account)) => *incidents.entry(account.clone()).or_default() += 1,
            _ => {}
        }
    }
    Ok(Expected {
        tickets,
        incident_spawns: incidents,
        final_incidents,
    })
}

pub async fn run(args: &SoakArgs) -> Result<SoakReport> {
    if args.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    let dir = fresh_dir(&args.dir)?;
    let db = open_empty(&args.database).await?;
    let stream = match &args.events {
        Some(file) => inbox::read_jsonl(file)?,
        None => generate(args.messages, args.seed),
    };
    let unique: BTreeSet<&str> = stream.iter().map(|m| m.transport_id.as_str()).collect();
    let phase = super::progress::spinner("replaying the stream sequentially (the expectation)");
    let want = expected(&dir, &stream).await?;
    phase.set_message(format!(
        "{} replicas: feeding {} messages with {} kills",
        args.replicas,
        stream.len(),
        args.kills
    ));
    let (mut replicas, exe, config_path) = start_replicas(args, &dir)?;

    let started = Instant::now();
    let kills = submit_with_kills(args, &db, &stream, &mut replicas, &exe, &config_path).await?;
    phase.set_message("waiting for every job to end");
    wait_until_done(&db, unique.len() as i64, args.timeout).await?;
    let seconds = started.elapsed().as_secs_f64();

    phase.set_message("draining every replica through the gate");
    let exit_codes = drain(&mut replicas).await?;
    phase.finish_and_clear();
    let orphans = stop_orphaned_workers(&dir.join("work")).await;
    let outcome = Outcome {
        kills,
        seconds,
        orphans: orphans.len(),
        exit_codes,
    };
    let report = tally(&db, args, &stream, &unique, &want, &replicas, outcome).await?;
    db.close().await;
    Ok(report)
}

/// The soak's directory, emptied of what an earlier soak left.
fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    for old in ["remotes", "work", "expected.db"] {
        let p = dir.join(old);
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(dir)
}

/// The database the replicas share; it must hold nothing yet.
async fn open_empty(database: &str) -> Result<Db> {
    let db = Db::connect(database)
        .await
        .with_context(|| format!("opening {database}"))?;
    if scalar(&db, "SELECT COUNT(*) FROM runs").await? > 0 {
        bail!("the soak needs an empty database, and {database} already holds messages or runs");
    }
    Ok(db)
}

/// Writes the replicas' configuration (every replica's address advertised, so a worker whose
/// replica was killed moves on to another) and starts them.
fn start_replicas(args: &SoakArgs, dir: &Path) -> Result<(Vec<Replica>, PathBuf, PathBuf)> {
    let mut config = soak_config(args, dir)?;
    let mut replicas: Vec<Replica> = Vec::new();
    for i in 0..args.replicas {
        replicas.push(Replica {
            port: free_port()?,
            run_dir: dir.join(format!("replica-{i}")),
            log: dir.join(format!("replica-{i}.log")),
            child: None,
        });
    }
    // Every replica's address: a worker whose replica was killed moves on to another.
    config.grpc.advertise = Some(
        replicas
            .iter()
            .map(|r| format!("http://127.0.0.1:{}", r.port))
            .collect::<Vec<_>>()
            .join(","),
    );
    let config_path = dir.join("conductor.toml");
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    let exe = std::env::current_exe()?;
    for r in &mut replicas {
        let _ = std::fs::remove_file(&r.log);
        r.start(&exe, &args.database, &config_path)?;
    }

    Ok((replicas, exe, config_path))
}

/// What the run itself measured, beside what the database holds after it.
struct Outcome {
    kills: usize,
    seconds: f64,
    orphans: usize,
    exit_codes: Vec<Option<i32>>,
}

/// The report: what the database holds after the run, against the sequential replay.
async fn tally(
    db: &Db,
    args: &SoakArgs,
    stream: &[RawMessage],
    unique: &BTreeSet<&str>,
    want: &Expected,
    replicas: &[Replica],
    outcome: Outcome,
) -> Result<SoakReport> {
    let stored_ids: BTreeSet<String> = with_pool!(db, |p| sqlx::query_scalar::<_, String>(
        "SELECT transport_id FROM messages"
    )
    .fetch_all(p)
    .await?)
    .into_iter()
    .collect();
    let undecided = scalar(
        db,
        "SELECT COUNT(*) FROM runs WHERE workflow = 'message' AND status <> 'done'",
    )
    .await?;
    let lost = unique
        .iter()
        .filter(|id| !stored_ids.contains(**id))
        .count() as i64
        + undecided;
    let got_tickets: Vec<String> = with_pool!(db, |p| sqlx::query_scalar::<_, String>(
        "SELECT ticket_key FROM agent_jobs WHERE ticket_key IS NOT NULL"
    )
    .fetch_all(p)
    .await?);
    // Incident jobs that went on to an agent (a job merged before that started none).
    let got_incidents: Vec<(String, i64)> = with_pool!(db, |p| {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT i.account, COUNT(*) FROM agent_jobs j JOIN incidents i ON i.id = j.incident_id
         WHERE j.state <> 'merged' GROUP BY i.account",
        )
        .fetch_all(p)
        .await?
    });
    let incident_jobs: i64 = scalar(
        db,
        "SELECT COUNT(*) FROM agent_jobs WHERE incident_id IS NOT NULL",
    )
    .await?;
    let distinct_incident_jobs: i64 = scalar(
        db,
        "SELECT COUNT(DISTINCT incident_id) FROM agent_jobs WHERE incident_id IS NOT NULL",
    )
    .await?;
    let ticket_set: BTreeSet<String> = got_tickets.iter().cloned().collect();
    let duplicate_spawns =
        (got_tickets.len() - ticket_set.len()) as i64 + (incident_jobs - distinct_incident_jobs);
    let mismatches = compare(want, &ticket_set, got_incidents);
    let jobs = scalar(db, "SELECT COUNT(*) FROM agent_jobs").await?;
    let merged = scalar(db, "SELECT COUNT(*) FROM agent_jobs WHERE state = 'merged'").await?;
    let attempts = scalar(db, "SELECT COUNT(*) FROM job_attempts").await?;
    let undecided_messages = scalar(
        db,
        "SELECT COUNT(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE d.message_id = m.id)",
    )
    .await?;
    let heads: Vec<String> = with_pool!(db, |p| sqlx::query_scalar::<_, String>(
        "SELECT COALESCE(head, '') FROM forge_records WHERE kind = 'pull'"
    )
    .fetch_all(p)
    .await?);
    let report = SoakReport {
        messages: stream.len(),
        unique_messages: unique.len(),
        replicas: args.replicas,
        kills: outcome.kills,
        seconds: outcome.seconds,
        expected_ticket_spawns: want.tickets.len(),
        expected_incident_spawns: want.incident_spawns.values().sum::<i64>() as usize,
        expected_agents: want.tickets.len() + want.final_incidents.values().sum::<i64>() as usize,
        agents_started: attempts,
        undecided: undecided_messages,
        cancelled_merged: merged,
        jobs,
        jobs_succeeded: scalar(
            db,
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
        )
        .await?,
        pull_requests: heads.len() as i64,
        workers_started: replicas
            .iter()
            .map(|r| {
                std::fs::read_to_string(&r.log)
                    .map(|t| t.matches("worker started").count() as i64)
                    .unwrap_or(0)
            })
            .sum(),
        lost_messages: lost,
        duplicate_spawns,
        extra_attempts: attempts - (jobs - merged),
        failed_attempts: with_pool!(db, |p| {
            sqlx::query_scalar::<_, String>(
            "SELECT worker_id || ': ' || COALESCE(failure, '') FROM job_attempts WHERE state = 'failed' ORDER BY worker_id"
        )
        .fetch_all(p)
        .await?
        }),
        duplicate_pull_requests: duplicate_pull_requests(&heads),
        jobs_not_succeeded: with_pool!(db, |p| {
            sqlx::query_scalar::<_, String>(
                "SELECT 'job ' || j.id || ' ' || j.state || ' outcome ' || COALESCE(j.outcome, '-')
                    || ' run ' || COALESCE(r.status, '-')
                    || COALESCE(' at ' || s.step || ' (attempt ' || s.attempts || '): ' || s.error, '')
                FROM agent_jobs j LEFT JOIN runs r ON r.id = j.run_id
                LEFT JOIN steps s ON s.run_id = j.run_id AND s.status <> 'done' AND s.error IS NOT NULL
                WHERE j.state NOT IN ('succeeded', 'merged') ORDER BY j.id",
            )
            .fetch_all(p)
            .await?
        }),
        orphaned_workers: outcome.orphans,
        mismatches,
        replica_exit_codes: outcome.exit_codes,
    };
    Ok(report)
}

/// Where the agents started differ from the sequential replay's: tickets spawned on one side
/// only, and accounts whose count of incident agents differs from their final incidents.
fn compare(
    want: &Expected,
    ticket_set: &BTreeSet<String>,
    got_incidents: Vec<(String, i64)>,
) -> Vec<String> {
    let mut mismatches = Vec::new();
    for k in want.tickets.symmetric_difference(ticket_set) {
        mismatches.push(format!(
            "ticket {k}: {} by the sequential replay",
            if want.tickets.contains(k) {
                "spawned only"
            } else {
                "not spawned"
            }
        ));
    }
    let got_incidents: BTreeMap<String, i64> = got_incidents.into_iter().collect();
    let accounts: BTreeSet<&String> = want
        .final_incidents
        .keys()
        .chain(got_incidents.keys())
        .collect();
    for a in accounts {
        let (want, got) = (
            want.final_incidents.get(a).copied().unwrap_or(0),
            got_incidents.get(a).copied().unwrap_or(0),
        );
        if want != got {
            mismatches.push(format!(
                "account {a}: {got} incident jobs went on to an agent; the sequential replay ends with {want} incidents"
            ));
        }
    }
    mismatches
}

/// Pull requests beyond one per job: heads are `conductor/j<job>-a<attempt>/<slug>`, one pull
/// request per job whichever attempt opened it.
fn duplicate_pull_requests(heads: &[String]) -> i64 {
    let mut per_job: BTreeMap<String, i64> = BTreeMap::new();
    for h in heads {
        let job = h
            .strip_prefix("conductor/")
            .and_then(|r| r.split('-').next())
            .unwrap_or(h)
            .to_owned();
        *per_job.entry(job).or_default() += 1;
    }
    per_job.values().map(|n| n - 1).sum()
}

/// The replicas' configuration: the scripted agent, quick timers, the local forge, and a route
/// per repository (generated traffic) or one default route (`--events`).
fn soak_config(args: &SoakArgs, dir: &Path) -> Result<Config> {
    let agent = dir.join("agent.sh");
    std::fs::write(&agent, AGENT)?;
    let mut config = Config::default();
    config.forge.kind = ForgeKind::Local;
    config.worker.work_root = dir.join("work");
    config.worker.agent_command = format!("sh {} ok", agent.display());
    config.worker.agent_timeout = Duration::from_secs(120);
    config.worker.unreachable_deadline = Duration::from_secs(120);
    config.jobs.heartbeat_interval = Duration::from_millis(500);
    config.jobs.lease = Duration::from_secs(20);
    config.jobs.handshake_timeout = Duration::from_secs(20);
    config.jobs.retry_backoff = Duration::from_secs(1);
    config.jobs.claim_poll = Duration::from_millis(500);
    config.jobs.await_poll = Duration::from_secs(5);
    config.incidents.settle = args.settle;
    if args.events.is_some() {
        // Any traffic: every job goes to the first repository.
        let repo = dir.join("remotes/r0.git");
        local_git::init_bare(&repo, "main", "# r0\n")?;
        config.routes.push(Route {
            default: true,
            repo: repo.display().to_string(),
            forge_repo: Some("acme/r0".into()),
            ..Route::default()
        });
    }
    for r in (0..REPOS).filter(|_| args.events.is_none()) {
        let repo = dir.join(format!("remotes/r{r}.git"));
        local_git::init_bare(&repo, "main", &format!("# r{r}\n"))?;
        config.routes.push(Route {
            project: Some(format!("SOAK{r}")),
            repo: repo.display().to_string(),
            forge_repo: Some(format!("acme/r{r}")),
            ..Route::default()
        });
    }
    for a in (0..ACCOUNTS).filter(|_| args.events.is_none()) {
        let repo = dir.join(format!("remotes/r{}.git", a % REPOS));
        config.routes.push(Route {
            account: Some(format!("{:012}", 200_000_000_000u64 + a as u64)),
            repo: repo.display().to_string(),
            forge_repo: Some(format!("acme/r{}", a % REPOS)),
            ..Route::default()
        });
    }
    Ok(config)
}

/// Submits `stream` in ten batches 400 ms apart while SIGKILLing a random replica
/// `args.kills` times (restarting it after up to 1.5 s); the number of kills.
async fn submit_with_kills(
    args: &SoakArgs,
    db: &Db,
    stream: &[RawMessage],
    replicas: &mut [Replica],
    exe: &Path,
    config_path: &Path,
) -> Result<usize> {
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x50a4);
    let batches: Vec<&[RawMessage]> = stream.chunks(stream.len().div_ceil(10).max(1)).collect();
    // Kill moments spread over the intake and the first jobs.
    let mut kill_at: Vec<Duration> = (0..args.kills)
        .map(|_| Duration::from_millis(rng.random_range(300..(1_500 * args.kills.max(4) as u64))))
        .collect();
    kill_at.sort();
    let mut kill_at: std::collections::VecDeque<Duration> = kill_at.into();
    let mut next_batch = 0;
    let mut submitted_at = Duration::ZERO;
    let mut kills = 0;
    loop {
        let now = started.elapsed();
        if next_batch < batches.len() && now >= submitted_at {
            inbox::submit(db, batches[next_batch], "soak").await?;
            next_batch += 1;
            submitted_at = now + Duration::from_millis(400);
        }
        if kill_at.front().is_some_and(|at| now >= *at) {
            kill_at.pop_front();
            let i = rng.random_range(0..replicas.len());
            replicas[i].kill();
            kills += 1;
            tracing::info!(replica = i, kills, "soak: SIGKILL");
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..1_500))).await;
            replicas[i].start(exe, &args.database, config_path)?;
        }
        if next_batch >= batches.len() && kill_at.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(kills)
}

/// Waits until every message is stored and decided and every job has ended, or `timeout`
/// passes (the report then shows what was left).
async fn wait_until_done(db: &Db, unique: i64, timeout: Duration) -> Result<()> {
    // Wait until every message is decided and every job has ended.
    let deadline = Instant::now() + timeout;
    loop {
        let pending = scalar(
            db,
            "SELECT COUNT(*) FROM runs WHERE status = 'running'",
        )
        .await?
            + scalar(
                db,
                "SELECT COUNT(*) FROM agent_jobs WHERE state NOT IN ('succeeded', 'failed', 'quarantined', 'merged')",
            )
            .await?;
        let stored = scalar(db, "SELECT COUNT(*) FROM messages").await?;
        if pending == 0 && stored >= unique {
            break;
        }
        if Instant::now() > deadline {
            tracing::error!(pending, stored, "soak: timed out waiting for the jobs");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// A deploy's way out: SIGTERM every replica once it is up, and each one's exit code (None:
/// it did not exit within a minute and was killed).
async fn drain(replicas: &mut [Replica]) -> Result<Vec<Option<i32>>> {
    let mut exit_codes = Vec::new();
    for r in replicas.iter_mut() {
        r.until_started().await?;
        if let Some(c) = &r.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }
    for r in replicas.iter_mut() {
        let code = match r.child.take() {
            Some(mut c) => {
                let until = Instant::now() + Duration::from_secs(60);
                loop {
                    if let Some(s) = c.try_wait()? {
                        break s.code();
                    }
                    if Instant::now() > until {
                        let _ = c.kill();
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            None => None,
        };
        exit_codes.push(code);
    }
    Ok(exit_codes)
}

/// Workers exit on their own after reporting: gives the last ones five seconds, then kills
/// what is left; the pids that had to be killed.
async fn stop_orphaned_workers(work_root: &Path) -> Vec<i32> {
    let mut orphans = workers_alive(work_root);
    for _ in 0..50 {
        if orphans.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        orphans = workers_alive(work_root);
    }
    for pid in &orphans {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    orphans
}
