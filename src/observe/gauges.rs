//! The gauges `/metrics` reads from the database when scraped: the backlog and its oldest
//! message's age, jobs by state, failures of the last hour, overdue steps, the gate and the
//! pause, the replicas and workers alive. Every replica reports the same values: take `max`
//! over replicas, not `sum`. The event counters are [`crate::telemetry`]'s.

use std::sync::Mutex;

use metrics::gauge;

use crate::{db::Db, error::Error, telemetry};

/// Reads the database's state into the gauges (see the module's doc), at `now_ms`.
pub async fn refresh(db: &Db, now_ms: i64) -> Result<(), Error> {
    telemetry::handle();
    // Whether the values below are this scrape's: 0 while the database does not answer (the
    // other gauges then keep their last values), and when they were last read.
    let health = match super::status::read(db, now_ms).await {
        Ok(h) => h,
        Err(e) => {
            gauge!("conductor_database_up").set(0.0);
            return Err(e);
        }
    };
    gauge!("conductor_database_up").set(1.0);
    gauge!("conductor_gauges_refreshed_timestamp_seconds").set(now_ms as f64 / 1000.0);
    gauge!("conductor_inbox_backlog").set(health.backlog as f64);
    gauge!("conductor_inbox_oldest_age_seconds")
        .set(health.oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
    // A state with no job any more reads 0, not its last count.
    {
        static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        for state in seen.iter() {
            if !health.jobs_by_state.iter().any(|s| &s.state == state) {
                gauge!("conductor_jobs", "state" => state.clone()).set(0.0);
            }
        }
        for s in &health.jobs_by_state {
            gauge!("conductor_jobs", "state" => s.state.clone()).set(s.jobs as f64);
            if !seen.contains(&s.state) {
                seen.push(s.state.clone());
            }
        }
    }
    gauge!("conductor_runs_failed_last_hour").set(health.runs_failed_last_hour as f64);
    gauge!("conductor_attempts_failed_last_hour").set(health.attempts_failed_last_hour as f64);
    gauge!("conductor_steps_overdue").set(health.steps_overdue as f64);
    gauge!("conductor_gate_closed").set(f64::from(u8::from(health.switches.gate.closed)));
    gauge!("conductor_paused").set(f64::from(u8::from(health.switches.pause.closed)));
    gauge!("conductor_replicas_alive").set(health.replicas.len() as f64);
    let workers = crate::jobs::live_workers(db).await?;
    gauge!("conductor_workers_live").set(workers.len() as f64);
    Ok(())
}
