//! `conductor run`: submits the files it is given, then serves every step queue through
//! [`conductor::server::run`] until a signal (or idle), and reports what failed for good.

use anyhow::{bail, Result};
use conductor::{
    db::{now_ms, Db},
    intake::inbox,
    jobs,
    jobs::history,
    runtime::RunOptions,
    server,
};

use super::{args::RunArgs, render};

/// `conductor run`.
pub async fn run(args: RunArgs) -> Result<()> {
    let RunArgs {
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
    } = args;
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
    let concurrency = concurrency.unwrap_or(conductor::runtime::default_concurrency(db.backend()));
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
    Ok(())
}
