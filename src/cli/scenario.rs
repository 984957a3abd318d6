//! `conductor scenario`: replay, run, generate and check scenario files.

use anyhow::{bail, Context, Result};
use conductor::{
    db::Db,
    intake::inbox,
    scenario::{self, gen, replay},
    scheduling::flags::Scheduling,
};

use super::args::ScenarioCmd;

/// `conductor scenario ...`.
pub async fn run(cmd: ScenarioCmd) -> Result<()> {
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
                return replay_stored(&db, &sched, &source, batch, store, json).await;
            }
            let path = events.expect("clap requires --events without --from-database");
            let messages = inbox::read_jsonl(&path)?;
            let report = replay::replay_with(&db, &sched, &messages, batch, store).await?;
            let shadow = match &sched.candidate {
                Some(_) => Some(conductor::scheduling::shadow::report(&db, None, 0, 10).await?),
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
        ScenarioCmd::Run { paths, json } => run_files(&paths, json).await?,
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

/// `scenario replay --from-database`: replays the stored messages of another database and
/// lists where its decisions differ from the stored ones.
async fn replay_stored(
    db: &Db,
    sched: &Scheduling,
    source: &str,
    batch: usize,
    store: replay::StoreMode,
    json: bool,
) -> Result<()> {
    let src = Db::connect_only(source).await?;
    let stored = scenario::stored_messages(&src).await?;
    let messages: Vec<_> = stored.iter().map(|(m, _)| m.clone()).collect();
    let report = replay::replay_with(db, sched, &messages, batch, store).await?;
    let diffs = scenario::differences(&stored, &report);
    let shadow = match &sched.candidate {
        Some(_) => Some(conductor::scheduling::shadow::report(db, None, 0, 10).await?),
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
                d.transport_id,
                d.stored.as_deref().unwrap_or("(none)"),
                d.replayed
            );
        }
    }
    Ok(())
}

/// `scenario run`: each file into a fresh database; fails if any expectation fails.
async fn run_files(paths: &[std::path::PathBuf], json: bool) -> Result<()> {
    let mut failed = 0;
    for path in paths {
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
    Ok(())
}
