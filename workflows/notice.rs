//! The notice workflow (docs/design.md section 11): one run per notice, started in the
//! transaction of the event it reports (an agent's handshake, a job's end).
//!
//! ```text
//! event (deliver's handshake,   ──► notify
//!        a job's end)               (after the subject's earlier notices; comment on the
//!                                    ticket or the incident's issue, then the configured
//!                                    transition; a tracker outage waits and asks again,
//!                                    never failing the job)
//! ```

use crate::{
    db::Tx,
    engine::{self, Workflow},
    error::Error,
    jobs::{
        self,
        notices::{self, Event},
    },
};

pub const NOTICE: Workflow = Workflow {
    name: "notice",
    steps: &[super::names::NOTIFY],
    // A notice whose run fails stays `pending` in `notices`, beside the failed step in the
    // history views; the job it reports is not touched.
    on_failure: None,
};

/// Records that `event` happened to job `job_id` in run `run_id` and starts the run that posts
/// it, in `tx` (the event's own transaction). A second call for the same run and event (a
/// step re-run) records nothing.
pub async fn tell(
    tx: &mut Tx,
    job_id: i64,
    run_id: i64,
    event: Event,
    now_ms: i64,
) -> Result<(), Error> {
    let job = jobs::load_job(tx, job_id).await?;
    let (outcome, issue_url) = jobs::outcome_of(tx, job_id).await?;
    let body = notices::body(&job, event, outcome.as_deref(), issue_url.as_deref());
    if let Some(id) = notices::record(tx, &job, run_id, event, &body, now_ms).await? {
        let key = notices::order_key(&job);
        engine::start_ordered_run(
            tx,
            &NOTICE,
            &serde_json::json!({ "notice_id": id }),
            key.as_deref(),
            now_ms,
        )
        .await?;
    }
    Ok(())
}
