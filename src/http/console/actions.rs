//! What an operator may do from the console, with the operator token: retry a job, close or
//! open the shutdown gate, pause or unpause intake. Each is the same library call as the
//! command (`conductor retry`, `drain`/`resume`, `pause`/`unpause`) and is recorded under
//! `console:<host:pid>`. Without a configured token every action is refused (403), and a wrong
//! token is refused and logged. The token comes in the form (the console's buttons) or as
//! `Authorization: Bearer`.

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
    Form,
};
use serde::Deserialize;

use super::super::HttpState;
use crate::{db::now_ms, intake::gate};

/// An action's form.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    token: String,
    /// The state asked for: `open`/`closed` (gate), `paused`/`running` (pause).
    #[serde(default)]
    state: String,
}

/// Why an action was refused.
pub enum Refusal {
    /// No operator token is configured: the console is read-only.
    ReadOnly,
    /// The request's token is missing or wrong.
    WrongToken,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let why = match self {
            Refusal::ReadOnly => "the console is read-only: no operator token is configured (http.operator_token_env)\n",
            Refusal::WrongToken => "wrong or missing operator token\n",
        };
        (StatusCode::FORBIDDEN, why).into_response()
    }
}

/// Whether the request carries the operator token.
fn authorised(state: &HttpState, headers: &HeaderMap, form: &ActionForm) -> Result<(), Refusal> {
    let Some(expected) = &state.operator_token else {
        return Err(Refusal::ReadOnly);
    };
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let given = if form.token.is_empty() {
        bearer
    } else {
        &form.token
    };
    // Compared through a hash: equal-length digests, no early exit on the secret's bytes.
    let expected = crate::secrets::hash_token(expected);
    if given.is_empty() || !crate::secrets::token_matches(&expected, given) {
        tracing::warn!("console action refused: wrong or missing operator token");
        return Err(Refusal::WrongToken);
    }
    Ok(())
}

fn who() -> String {
    format!("console:{}", crate::observe::replicas::whoami())
}

fn failed(e: crate::Error) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

/// `POST /actions/retry/{job}`: a new run for an ended job.
pub async fn retry(
    State(state): State<HttpState>,
    Path(job): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(refused) = authorised(&state, &headers, &form) {
        return refused.into_response();
    }
    let result = async {
        let mut tx = state.db.begin().await?;
        let run = crate::workflows::job::retry(&mut tx, job, now_ms()).await?;
        tx.commit().await?;
        Ok::<_, crate::Error>(run)
    }
    .await;
    match result {
        Ok(run) => {
            tracing::info!(job_id = job, run_id = run, by = %who(), "job retried from the console");
            Redirect::to(&format!("/jobs/{job}")).into_response()
        }
        Err(crate::Error::Invalid(why)) => {
            (StatusCode::CONFLICT, format!("{why}\n")).into_response()
        }
        Err(e) => failed(e),
    }
}

/// The switch state a form asks for: true for `closed_word`, false for `open_word`; for
/// anything else, the 400 answer naming both.
fn requested(form: &ActionForm, closed_word: &str, open_word: &str) -> Result<bool, String> {
    match form.state.as_str() {
        s if s == closed_word => Ok(true),
        s if s == open_word => Ok(false),
        other => Err(format!(
            "state must be {open_word} or {closed_word}, not {other:?}\n"
        )),
    }
}

/// `POST /actions/gate` with `state=closed|open`.
pub async fn gate(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(refused) = authorised(&state, &headers, &form) {
        return refused.into_response();
    }
    let closed = match requested(&form, "closed", "open") {
        Ok(closed) => closed,
        Err(bad) => return (StatusCode::BAD_REQUEST, bad).into_response(),
    };
    match gate::set(&state.db, closed, &who()).await {
        Ok(()) => Redirect::to("/").into_response(),
        Err(e) => failed(e),
    }
}

/// `POST /actions/pause` with `state=paused|running`.
pub async fn pause(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(refused) = authorised(&state, &headers, &form) {
        return refused.into_response();
    }
    let paused = match requested(&form, "paused", "running") {
        Ok(paused) => paused,
        Err(bad) => return (StatusCode::BAD_REQUEST, bad).into_response(),
    };
    match gate::set_pause(&state.db, paused, &who()).await {
        Ok(()) => Redirect::to("/").into_response(),
        Err(e) => failed(e),
    }
}
