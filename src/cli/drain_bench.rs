//! `conductor bench drain`: how fast the shutdown gate acts (docs/design.md section 6). Each round
//! starts a real `conductor run` child with JSON logs, lets `--agents` slow agents start while
//! duplicates keep the intake busy, writes `true` into the gate file, and times:
//!
//! - **gate → intake stopped**: from the write to the child's "intake stopped" log line (every
//!   intake worker of the process has ended: nothing more is ingested, decided or spawned);
//! - **last report → ready file**: from the last agent's report (`job_attempts.reported_ms`)
//!   to the ready file's modification time (its pull request opened, its job finished, the
//!   drain seen complete);
//! - **gate → exit**: the whole drain, agents' remaining work included.
//!
//! The original conductor polled its gate file every 5 s, so its first figure averaged 2.5 s.
//! Nothing here asserts a time; it measures and prints.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use conductor::{
    bench,
    config::{Config, ForgeKind, Route},
    db::Db,
    intake::gate,
    intake::inbox,
    jobs::local_git,
    scenario::gen,
    scheduling::domain::RawMessage,
};
use serde::Serialize;

use super::soak::scalar;

const AGENT: &str = include_str!("../../worker/agents/scripted.sh");

#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// Postgres server to create a scratch database on per round (e.g.
    /// postgres://127.0.0.1:5432/postgres); default: a SQLite file per round.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Agents working when the gate closes.
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// How long each agent works (whole seconds).
    #[arg(long, default_value_t = 3)]
    pub agent_seconds: u32,
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Where each round's repositories, database, run directory and log go.
    #[arg(long, default_value = "conductor-bench-drain")]
    pub dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// Reads one figure off a round.
type Figure = fn(&Round) -> f64;

/// One round's figures, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub gate_to_intake_stopped_ms: f64,
    pub last_report_to_ready_ms: f64,
    pub gate_to_exit_ms: f64,
    pub exit_code: Option<i32>,
    /// Jobs that succeeded (every agent that was working when the gate closed).
    pub jobs_succeeded: i64,
    /// Messages that arrived after the gate closed and wait, undecided, in the inbox.
    pub pooled: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    pub backend: &'static str,
    pub agents: usize,
    pub agent_seconds: u32,
    pub rounds: Vec<Round>,
}

impl DrainReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = format!(
            "drain on {} ({} agents of {} s, {} rounds)\n",
            self.backend,
            self.agents,
            self.agent_seconds,
            self.rounds.len()
        );
        let figures: [(&str, Figure); 3] = [
            ("gate -> intake stopped", |r| r.gate_to_intake_stopped_ms),
            ("last report -> ready file", |r| r.last_report_to_ready_ms),
            ("gate -> exit 0", |r| r.gate_to_exit_ms),
        ];
        let _ = writeln!(
            out,
            "{:<28} {:>9} {:>9} {:>9}",
            "ms", "min", "median", "max"
        );
        for (name, f) in figures {
            let mut v: Vec<f64> = self.rounds.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            if v.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "{name:<28} {:>9.1} {:>9.1} {:>9.1}",
                v[0],
                v[v.len() / 2],
                v[v.len() - 1]
            );
        }
        for (i, r) in self.rounds.iter().enumerate() {
            let _ = writeln!(
                out,
                "round {i}: exit {:?}, {} jobs succeeded, {} messages pooled",
                r.exit_code, r.jobs_succeeded, r.pooled
            );
        }
        out
    }
}

fn ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3
}

/// The time of the first JSON log line with `message` at or after `after`.
fn logged_at(log: &Path, message: &str, after: SystemTime) -> Result<Option<SystemTime>> {
    let text = std::fs::read_to_string(log)?;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["fields"]["message"] != message {
            continue;
        }
        let Some(at) = v["timestamp"].as_str() else {
            continue;
        };
        let at = humantime::parse_rfc3339_weak(at.trim_end_matches('Z'))
            .with_context(|| format!("log timestamp {at:?}"))?;
        if at >= after {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

pub async fn run(args: &DrainArgs) -> Result<DrainReport> {
    if args.agents == 0 || args.rounds == 0 {
        bail!("--agents and --rounds must be at least 1");
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let mut rounds = Vec::new();
    let bar = super::progress::bar(args.rounds, "rounds");
    bar.set_message("draining");
    for i in 0..args.rounds {
        bar.set_position(i as u64);
        let round_dir = dir.join(format!("round-{i}"));
        if round_dir.exists() {
            std::fs::remove_dir_all(&round_dir)?;
        }
        std::fs::create_dir_all(&round_dir)?;
        let (db, url, cleanup) = match &args.postgres {
            Some(admin) => {
                let (db, url, cleanup) = bench::fresh_postgres(admin, "conductor_drain").await?;
                (db, url, Some(cleanup))
            }
            None => {
                let url = format!("sqlite:{}", round_dir.join("conductor.db").display());
                (Db::connect(&url).await?, url, None)
            }
        };
        let round = round(args, &round_dir, &db, &url).await;
        db.close().await;
        if let Some(cleanup) = cleanup {
            cleanup.await?;
        }
        let round = round?;
        tracing::info!(round = i, ?round, "drain round done");
        rounds.push(round);
    }
    bar.finish_and_clear();
    Ok(DrainReport {
        backend: if args.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        agents: args.agents,
        agent_seconds: args.agent_seconds,
        rounds,
    })
}

async fn round(args: &DrainArgs, dir: &Path, db: &Db, url: &str) -> Result<Round> {
    let agent = dir.join("agent.sh");
    std::fs::write(&agent, AGENT)?;
    let mut config = Config::default();
    config.grpc.listen = "127.0.0.1:0".into();
    config.forge.kind = ForgeKind::Local;
    config.worker.work_root = dir.join("work");
    config.worker.agent_command = format!(
        "sh {} slow {} {}",
        agent.display(),
        dir.join("agent.log").display(),
        args.agent_seconds
    );
    // One repository per agent, so none waits for another's claim.
    for a in 0..args.agents {
        let repo = dir.join(format!("remotes/d{a}.git"));
        local_git::init_bare(&repo, "main", "# drain\n")?;
        config.routes.push(Route {
            project: Some(format!("DRN{a}")),
            repo: repo.display().to_string(),
            forge_repo: Some(format!("acme/d{a}")),
            ..Route::default()
        });
    }
    // Tickets only: alarms have no route here, so they are switched off rather than left to
    // fail (`conductor run` refuses a configuration where they could start unrouted).
    config.flags.incidents = Some("off".into());
    let config_path = dir.join("conductor.toml");
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    let run_dir = dir.join("run");
    let log_path = dir.join("conductor.log");
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--log-json", "run", "--database", url, "--config"])
        .arg(&config_path)
        .arg("--run-dir")
        .arg(&run_dir)
        .env(
            "CONDUCTOR_LOG",
            "info,sqlx=error,apalis=warn,apalis_core=warn",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("starting conductor run")?;

    let tickets: Vec<RawMessage> = (0..args.agents)
        .map(|a| RawMessage {
            transport_id: format!("t-{a}"),
            body: gen::ticket(&format!("DRN{a}-1"), "drain", None),
            raw: None,
        })
        .collect();
    inbox::submit(db, &tickets, "bench").await?;
    // Duplicates keep ingest and decide busy until after the gate closes; they never spawn.
    let trickle = {
        let db = db.clone();
        let tickets = tickets.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let t = &tickets[n % tickets.len()];
                let dup = RawMessage {
                    transport_id: format!("dup-{n}"),
                    body: t.body.clone(),
                    raw: None,
                };
                if inbox::submit(&db, &[dup], "bench").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while scalar(
        db,
        "SELECT COUNT(*) FROM job_attempts WHERE state = 'delivered'",
    )
    .await?
        < args.agents as i64
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the agents did not start within a minute; see {}",
                log_path.display()
            );
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "conductor run exited early ({status}); see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let closed_at = SystemTime::now();
    let started = Instant::now();
    std::fs::write(run_dir.join(gate::GATE_FILE), "true\n")?;
    let deadline = Instant::now() + Duration::from_secs(60 + 3 * args.agent_seconds as u64);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the drain did not end; see {}", log_path.display());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let gate_to_exit_ms = started.elapsed().as_secs_f64() * 1e3;
    trickle.abort();

    let intake_stopped = logged_at(&log_path, "intake stopped", closed_at)?
        .with_context(|| format!("no \"intake stopped\" line in {}", log_path.display()))?;
    let ready = std::fs::metadata(run_dir.join(gate::READY_FILE))
        .with_context(|| format!("no ready file in {}", run_dir.display()))?
        .modified()?;
    let last_report = scalar(db, "SELECT COALESCE(MAX(reported_ms), 0) FROM job_attempts").await?;
    Ok(Round {
        gate_to_intake_stopped_ms: ms(intake_stopped) - ms(closed_at),
        last_report_to_ready_ms: ms(ready) - last_report as f64,
        gate_to_exit_ms,
        exit_code: status.code(),
        jobs_succeeded: scalar(
            db,
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
        )
        .await?,
        pooled: scalar(
            db,
            "SELECT COUNT(*) FROM runs WHERE workflow = 'message' AND status = 'running'",
        )
        .await?,
    })
}
