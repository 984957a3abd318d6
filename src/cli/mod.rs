//! The commands: one file per command family, the binary-only tools (demo, soak, benches)
//! beside them. Each handler parses nothing and serves nothing itself: it calls the library.
//!
//! - [`args`]: the command line's shape (clap).
//! - `config_cmd`, `scenario`, `flags_cmd`, `bench`: the handlers too long to sit in
//!   [`dispatch`]; `render`: tables for the terminal.
//! - `demo`, `soak`, `drain_bench`, `ingest_bench`: tools that start conductors as processes.

pub mod args;
mod bench;
mod config_cmd;
mod demo;
mod drain_bench;
mod flags_cmd;
mod ingest_bench;
mod render;
mod scenario;
mod soak;

use anyhow::{bail, Result};
use conductor::{
    db::{now_ms, Backend, Db},
    flags, gate, history, inbox, jobs,
    runtime::RunOptions,
    server, workflows,
};

use args::{BenchCmd, Cli, Command, DbArg, HistoryCmd};

/// Runs the command `cli` names.
pub async fn dispatch(cli: Cli) -> Result<()> {
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
            let signals = server::Signals::new()?;
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
            let serving = server::Serving {
                until_idle,
                allow_unrouted,
            };
            let started_ms = now_ms();
            server::run(db.clone(), config, opts, serving, &run_dir, signals).await?;
            if until_idle {
                print!(
                    "{}",
                    history::render(&history::show(&db, &history::Subject::DecisionCounts).await?)
                );
                print!("{}", render::jobs(&jobs::list(&db, false, 50).await?));
                // Idle is not success: what failed for good during this run says so in the
                // exit code.
                let failed = conductor::engine::failed_runs(&db, started_ms, 100).await?;
                if !failed.is_empty() {
                    println!("\nWorkflow runs that failed for good:");
                    print!("{}", render::failed_runs(&failed));
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
        Command::Scenario(cmd) => return scenario::run(cmd).await,
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
                print!("{}", render::jobs(&list));
            }
        }
        Command::Quarantine { db } => {
            let db = open(&db).await?;
            print!("{}", render::jobs(&jobs::list(&db, true, i64::MAX).await?));
            let failed = conductor::engine::failed_runs(&db, 0, 100).await?;
            if !failed.is_empty() {
                println!("\nWorkflow runs that failed for good (conductor history run N):");
                print!("{}", render::failed_runs(&failed));
            }
        }
        Command::Retry { db, job } => {
            let db = open(&db).await?;
            let mut tx = db.begin().await?;
            let run = workflows::job::retry(&mut tx, job, now_ms()).await?;
            tx.commit().await?;
            println!("job {job}: new run {run}; `conductor run` picks it up");
        }
        Command::Demo { dir } => demo::run(&dir).await?,
        Command::Config { config, action } => config_cmd::run(&config, action)?,
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
            gate::set(&db, true, &format!("cli:{}", server::whoami())).await?;
            println!(
                "gate closed: intake pauses on every replica; each exits once nothing is in flight"
            );
        }
        Command::Resume { db } => {
            let db = open(&db).await?;
            gate::set(&db, false, &format!("cli:{}", server::whoami())).await?;
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
            flags_cmd::run(&db, &settings, action, json).await?;
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
                print!("{}", render::resolved(&resolved));
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
            bench::decide(
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

/// Opens the database of a command that reads or steers an existing deployment: a missing
/// SQLite file is an error naming it, never a new empty database.
/// It does not migrate: the schema is `conductor run`'s to bring up to date, and a health
/// check or an operator's look during a deploy must not migrate under the running replicas.
async fn open(db: &DbArg) -> Result<Db> {
    Ok(Db::connect_only(&db.database).await?)
}
