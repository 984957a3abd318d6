//! `conductor status`: behind or stuck? The verdict first, then the backlog and its oldest
//! message, jobs by state, failures of the last hour, the replicas alive, the gate and the
//! pause, the resolved flags and the workers in flight.

use anyhow::Result;
use conductor::{
    db::now_ms,
    intake::gate::{self, GateState},
    jobs, observe,
    scheduling::{domain::format_ms, flags},
};

use super::{
    args::{ConfigArg, DbArg},
    render,
};

/// `conductor status`.
pub async fn run(db: &DbArg, config: &ConfigArg, json: bool) -> Result<()> {
    let settings = flags::Settings::from_config(config.load()?.flag_config())?;
    let db = super::open(db).await?;
    let resolved = settings.resolve(&flags::read(&db).await?)?;
    let health = observe::status::read(&db, now_ms()).await?;
    let busy = gate::in_flight(&db).await?;
    let workers = jobs::live_workers(&db).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "health": health,
                // Kept for scripts written before `health`: the same values.
                "gate": health.switches.gate,
                "pause": health.switches.pause,
                "flags": resolved,
                "in_flight": busy,
                "workers": workers,
            })
        );
        return Ok(());
    }
    let h = &health;
    println!("{}: {}", h.verdict.as_str(), h.reason);
    println!(
        "backlog: {} message(s) undecided{}",
        h.backlog,
        h.oldest_age_ms
            .map(|ms| format!(
                ", the oldest for {}",
                humantime::format_duration(std::time::Duration::from_secs((ms / 1000) as u64))
            ))
            .unwrap_or_default()
    );
    let by_state: Vec<String> = h
        .jobs_by_state
        .iter()
        .map(|s| format!("{} {}", s.jobs, s.state))
        .collect();
    println!(
        "jobs: {}",
        if by_state.is_empty() {
            "none".into()
        } else {
            by_state.join(", ")
        }
    );
    println!(
        "last hour: {} run(s) failed for good, {} attempt(s) failed; {} step(s) overdue",
        h.runs_failed_last_hour, h.attempts_failed_last_hour, h.steps_overdue
    );
    println!("gate: {}", switch(&h.switches.gate, "closed", "open"));
    println!("pause: {}", switch(&h.switches.pause, "paused", "off"));
    println!("replicas alive: {}", h.replicas.len());
    for r in &h.replicas {
        println!(
            "  {:<24} v{:<8} intake {:<9} seen {}{}",
            r.id,
            r.version,
            r.intake,
            format_ms(r.last_seen_ms),
            r.http
                .as_deref()
                .map(|u| format!("  {u}"))
                .unwrap_or_default()
        );
    }
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
                .map(format_ms)
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

/// `closed since … by …`, or the open word.
fn switch(s: &GateState, closed: &str, open: &str) -> String {
    if !s.closed {
        return open.to_owned();
    }
    if s.since_ms > 0 {
        format!("{closed} since {} by {}", format_ms(s.since_ms), s.by)
    } else {
        closed.to_owned()
    }
}
