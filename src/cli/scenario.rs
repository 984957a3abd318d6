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
            replay_file(&db, &sched, &path, batch, store, json, decisions).await?;
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

/// `scenario replay --events FILE`: reads, decides and prints a batch at a time, so memory
/// stays flat however long the file is. `--json` writes one document whose `decisions` come
/// first, a line each as they are decided, then `summary`, `incidents` and `shadow`; the
/// text form prints the summary, then (with `--decisions`) each message's line.
async fn replay_file(
    db: &Db,
    sched: &conductor::scheduling::flags::Scheduling,
    path: &std::path::Path,
    batch: usize,
    store: replay::StoreMode,
    json: bool,
    decisions: bool,
) -> Result<()> {
    use std::io::Write;
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let mut input = inbox::JsonlReader::open(path)?;
    let bar = progress::bytes_bar(size);
    bar.set_message("replaying");
    let mut replayer = replay::Replayer::new(db, sched, store)?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    // The text form prints its summary first: it keeps the lines (only when asked for them).
    let mut kept = Vec::new();
    let mut first = true;
    let mut decided = 0usize;
    if json {
        write!(out, "{{\"decisions\": [")?;
    }
    loop {
        let chunk = input.take_batch(batch.max(1))?;
        if chunk.is_empty() {
            break;
        }
        let lines = replayer.feed(&chunk).await?;
        decided += lines.len();
        if json {
            for l in &lines {
                let sep = if first { "\n" } else { ",\n" };
                first = false;
                write!(out, "{sep}{}", serde_json::to_string(l)?)?;
            }
        } else if decisions {
            kept.extend(lines);
        }
        bar.set_position(input.bytes_read);
    }
    bar.finish_and_clear();
    let summary = replayer.finish().await?;
    let shadow = match &sched.candidate {
        Some(_) => Some(conductor::scheduling::shadow::report(db, None, 0, 10).await?),
        None => None,
    };
    if json {
        write!(
            out,
            "\n],\n\"summary\": {},\n\"incidents\": [",
            serde_json::to_string(&summary)?
        )?;
        let mut first = true;
        replay::for_each_incident(db, &mut |i| {
            let sep = if first { "\n" } else { ",\n" };
            first = false;
            let line =
                serde_json::to_string(&i).map_err(|e| conductor::Error::Invalid(e.to_string()))?;
            write!(out, "{sep}{line}")
                .map_err(|e| conductor::Error::Unavailable(format!("writing the output: {e}")))
        })
        .await?;
        write!(out, "\n]")?;
        if let Some(shadow) = &shadow {
            write!(out, ",\n\"shadow\": {}", serde_json::to_string(shadow)?)?;
        }
        writeln!(out, "\n}}")?;
    } else {
        let report = replay::Report {
            summary,
            decisions: kept,
            incidents: Vec::new(),
        };
        write!(out, "{}", replay::render_summary(&report))?;
        if let Some(shadow) = &shadow {
            write!(out, "\n{}", shadow.render())?;
        }
        if decisions {
            write!(out, "\n{}", replay::render_decisions(&report))?;
        } else {
            writeln!(
                out,
                "(--decisions lists each of the {decided} messages' decision)"
            )?;
        }
    }
    out.flush()?;
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
