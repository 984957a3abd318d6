//! The commands: one file per command family, the binary-only tools (demo, soak, benches)
//! beside them. Each handler parses nothing and serves nothing itself: it calls the library.
//!
//! - [`args`]: the command line's shape (clap).
//! - `run_cmd`, `status`, `config_cmd`, `routes_cmd`, `scenario`, `flags_cmd`, `bench`: the handlers too
//!   long to sit in [`dispatch`]; `render`: tables for the terminal.
//! - `demo`, `soak`, `drain_bench`, `ingest_bench`: tools that start conductors as processes.

pub mod args;
mod bench;
mod bench_peers;
mod config_cmd;
mod console;
mod demo;
mod drain_bench;
mod flags_cmd;
mod ingest_bench;
mod progress;
mod render;
mod routes_cmd;
mod run_cmd;
mod scenario;
mod soak;
mod status;

use anyhow::Result;
use conductor::{
    db::{now_ms, Db},
    intake::gate,
    intake::inbox,
    jobs,
    jobs::history,
    observe::replicas::whoami,
    scheduling::flags,
    workflows,
};

use args::{Cli, Command, DbArg, HistoryCmd};

/// Runs the command `cli` names.
pub async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run_cmd::run(args).await?,
        Command::Submit { db, files } => {
            let messages = inbox::read_inputs(&files)?;
            let db = Db::connect(&db.database).await?;
            let bar = progress::bar(messages.len(), "messages");
            bar.set_message("submitting");
            let n =
                inbox::submit_reporting(&db, &messages, "inbox", &|n| bar.set_position(n as u64))
                    .await?;
            bar.finish_and_clear();
            eprintln!("submitted {n} message(s) to the inbox");
            db.close().await;
        }
        Command::Scenario(cmd) => return scenario::run(cmd).await,
        Command::History { db, json, subject } => {
            let db = open(&db).await?;
            let subject = match subject {
                HistoryCmd::Message { id } => history::Subject::Message(id),
                HistoryCmd::Ticket { key } => history::Subject::Ticket(key),
                HistoryCmd::Incident { id } => history::Subject::Incident(id),
                HistoryCmd::Job { id } => history::Subject::Job(id),
                HistoryCmd::Run { id } => history::Subject::Run(id),
                HistoryCmd::Recent { n } => history::Subject::Recent(n),
                HistoryCmd::AgentTime { account } => history::Subject::AgentTime(account),
            };
            let sections = history::show(&db, &subject).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&history::to_json(&sections))?
                );
            } else {
                print!("{}", history::render(&sections));
            }
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
        Command::Quarantine { db, json } => {
            let db = open(&db).await?;
            let quarantined = jobs::list(&db, true, i64::MAX).await?;
            let failed = conductor::engine::failed_runs(&db, 0, 100).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"quarantined": quarantined, "failed_runs": failed})
                    )?
                );
                return Ok(());
            }
            print!("{}", render::jobs(&quarantined));
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
        Command::Routes { config, action } => routes_cmd::run(&config, action)?,
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
        Command::Pause { db } => {
            let db = open(&db).await?;
            gate::set_pause(&db, true, &format!("cli:{}", whoami())).await?;
            println!("intake paused on every replica until `conductor unpause` (running jobs go on; restarts keep it paused)");
        }
        Command::Unpause { db } => {
            let db = open(&db).await?;
            gate::set_pause(&db, false, &format!("cli:{}", whoami())).await?;
            let gate = gate::state(&db).await?;
            if gate.closed {
                println!("unpaused; the shutdown gate is still closed (by {}): intake resumes after `conductor resume`", gate.by);
            } else {
                println!("unpaused: intake resumes");
            }
        }
        Command::Flags {
            db,
            config,
            json,
            action,
        } => {
            let settings = flags::Settings::from_config(config.load()?.flag_config())?;
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
                conductor::scheduling::shadow::report(&db, candidate.as_deref(), since_ms, last)
                    .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
        }
        Command::Status { db, config, json } => status::run(&db, &config, json).await?,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "conductor", &mut script);
            // Written, not printed: a reader that stops early (`| head`) is no error here.
            use std::io::Write;
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
        Command::Console { db, config, listen } => console::run(&db, &config, listen).await?,
        Command::Bench(cmd) => bench::run(cmd).await?,
    }
    Ok(())
}

/// Opens the database of a command that reads or steers an existing deployment: a missing
/// SQLite file is an error naming it, never a new empty database.
/// It does not migrate: the schema is `conductor run`'s to bring up to date, and a health
/// check or an operator's look during a deploy must not migrate under the running replicas.
pub(crate) async fn open(db: &DbArg) -> Result<Db> {
    Ok(Db::connect_only(&db.database).await?)
}
