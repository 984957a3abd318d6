//! `conductor status`: the gate, the resolved flags, and what is in flight, on one screen.

use anyhow::Result;
use conductor::{intake::gate, jobs, scheduling::flags};

use super::{
    args::{ConfigArg, DbArg},
    render,
};

/// `conductor status`.
pub async fn run(db: &DbArg, config: &ConfigArg, json: bool) -> Result<()> {
    let settings = flags::Settings::from_config(config.load()?.flag_config())?;
    let db = super::open(db).await?;
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
                conductor::scheduling::domain::format_ms(state.since_ms),
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
                    .map(conductor::scheduling::domain::format_ms)
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
    Ok(())
}
