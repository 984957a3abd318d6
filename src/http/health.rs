//! `/healthz`, `/readyz` and `/metrics`.
//!
//! - `/healthz`: the process is alive — its supervising loop went round within
//!   [`STALE_AFTER_MS`]. A failing liveness check is a reason to restart the process, so it
//!   looks at nothing else (not the database: an outage must not restart every replica).
//! - `/readyz`: this replica should get traffic — the database answers, its schema is the one
//!   this build knows, and intake is not closed by a drain (the gate, a signal) or by storage
//!   trouble. A pause is not a drain: a paused replica stays ready (what a webhook or a queue
//!   brings is still stored; nothing new starts) and says so.
//! - `/metrics`: the Prometheus text, with the database's gauges read at scrape time.

use std::sync::atomic::Ordering;

use axum::{extract::State, http::StatusCode, response::IntoResponse};

use super::HttpState;
use crate::{db::now_ms, observe::replicas::Intake};

/// The supervising loop goes round every 100 ms; this much silence means it is wedged.
pub const STALE_AFTER_MS: i64 = 30_000;

/// `/healthz`.
pub async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    match &state.process {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(p) => {
            let silent_ms = now_ms() - p.last_tick_ms.load(Ordering::Relaxed);
            if silent_ms > STALE_AFTER_MS {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("unhealthy: the supervising loop last went round {silent_ms} ms ago\n"),
                )
            } else {
                (StatusCode::OK, "ok\n".to_owned())
            }
        }
    }
}

/// `/readyz`.
pub async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let not_ready = |why: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
    };
    match state.db.schema_current().await {
        Err(e) => return not_ready(format!("the database does not answer: {e}")),
        Ok(false) => {
            return not_ready(
                "the database schema is not this build's (run `conductor run` of this version to migrate, or roll back)".into(),
            )
        }
        Ok(true) => {}
    }
    let Some(process) = &state.process else {
        return (StatusCode::OK, "ready\n".to_owned());
    };
    let intake = *process.intake.borrow();
    match intake {
        Intake::Open => (StatusCode::OK, "ready\n".to_owned()),
        Intake::Paused => (
            StatusCode::OK,
            "ready (intake paused by `conductor pause`)\n".to_owned(),
        ),
        Intake::Draining => not_ready("draining: the shutdown gate is closed".into()),
        Intake::Closed => not_ready("the database takes no writes; intake stopped".into()),
        Intake::Stopped => not_ready("stopping".into()),
    }
}

/// `/metrics`.
pub async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    if let Err(e) = crate::observe::gauges::refresh(&state.db, now_ms()).await {
        // The counters are still worth a scrape; the gauges keep their last values.
        tracing::warn!(error = %e, "metrics: cannot read the database's gauges");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(),
    )
}
