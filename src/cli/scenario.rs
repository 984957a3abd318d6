//! `conductor scenario`: replay, run, generate and check scenario files.

use anyhow::{bail, Context, Result};
use conductor::{
    db::Db,
    intake::inbox,
    scenario::{self, gen, replay},
    scheduling::flags::Scheduling,
};

use super::{args::ScenarioCmd, progress};

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
            decisions,
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
                return replay_stored(&db, &sched, &source, batch, store, json, decisions).await;
            }
            let path = events.expect("clap requires --events without --from-database");
            let messages = inbox::read_jsonl(&path)?;
            let bar = progress::bar(messages.len(), "messages");
            bar.set_message("replaying");
            let report = replay::replay_reporting(&db, &sched, &messages, batch, store, &|n| {
                bar.set_position(n as u64)
            })
            .await?;
            bar.finish_and_clear();
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
                // The summary first; one line per message only when asked.
                print!("{}", replay::render_summary(&report));
                if let Some(shadow) = &shadow {
                    print!("\n{}", shadow.render());
                }
                if decisions {
                    print!("\n{}", replay::render_decisions(&report));
                } else {
                    println!(
                        "(--decisions lists each of the {} messages' decision)",
                        report.decisions.len()
                    );
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
    decisions: bool,
) -> Result<()> {
    let src = Db::connect_only(source).await?;
    let stored = scenario::stored_messages(&src).await?;
    let messages: Vec<_> = stored.iter().map(|(m, _)| m.clone()).collect();
    let bar = progress::bar(messages.len(), "messages");
    bar.set_message("re-deciding");
    let report = replay::replay_reporting(db, sched, &messages, batch, store, &|n| {
        bar.set_position(n as u64)
    })
    .await?;
    bar.finish_and_clear();
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
        println!(
            "{} of {} stored decisions differ",
            diffs.len(),
            stored.len()
        );
        print!("{}", replay::render_summary(&report));
        if let Some(shadow) = &shadow {
            println!("{}", shadow.render());
        }
        for d in &diffs {
            println!(
                "  {}: stored {}, replayed {}",
                d.transport_id,
                d.stored.as_deref().unwrap_or("(none)"),
                d.replayed
            );
        }
        if decisions {
            print!("\n{}", replay::render_decisions(&report));
        }
    }
    Ok(())
}

/// `scenario run`: each file into a fresh database; fails if any expectation fails.
async fn run_files(paths: &[std::path::PathBuf], json: bool) -> Result<()> {
    let mut failed = 0;
    let mut docs = Vec::new();
    for path in paths {
        let (db, _dir) = scenario::temp_sqlite().await?;
        let outcome = scenario::file::run_file(path, &db).await?;
        db.close().await;
        let passed = outcome.failures.is_empty();
        if json {
            docs.push(serde_json::json!({
                "file": path.display().to_string(),
                "description": outcome.description,
                "passed": passed,
                "failures": outcome.failures,
                "report": outcome.report,
            }));
        } else {
            let status = if passed { "ok" } else { "FAILED" };
            println!("{status:<6} {} — {}", path.display(), outcome.description);
            for f in &outcome.failures {
                println!("         {f}");
            }
        }
        failed += usize::from(!passed);
    }
    if json {
        // One document: every scenario, then the count.
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "scenarios": docs,
                "passed": paths.len() - failed,
                "failed": failed,
            }))?
        );
    } else {
        println!("{} passed, {} failed", paths.len() - failed, failed);
    }
    if failed > 0 {
        bail!("{failed} scenario(s) failed their expectations");
    }
    Ok(())
}
