//! The web console: server-rendered pages (minijinja templates in `src/http/templates/`, no
//! JavaScript), read-only unless an operator token is configured ([`actions`]).
//!
//! - `/`: "behind or stuck?" ([`crate::observe::status`]), the gate and the pause, replicas,
//!   jobs by state, the latest jobs;
//! - `/jobs`, `/jobs/{id}`: jobs with state, attempts, branch and pull request; a job's step
//!   timeline (each step's start, end, attempts, error) and its attempts' workers and reports;
//! - `/incidents`, `/incidents/{id}`: an incident's alarms over time, its merges and the
//!   agent it started, as a picture ([`picture`]) and as rows;
//! - `/messages`, `/messages/{id}`: a message's body, decision, reason and run; `/runs/{id}`:
//!   a workflow run's steps;
//! - `/shadow`: the shadow report; `/flags`: the flags, the gate, the pause, their history.
//!
//! Every row comes from the history views and named queries the CLI uses
//! ([`crate::jobs::history`]), so the console and `conductor history` never disagree.

pub mod actions;
pub mod picture;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{Html, IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde::Serialize;
use serde_json::json;

use super::HttpState;
use crate::{
    db::{now_ms, Db},
    error::Error,
    jobs::history::{self, Section, Subject},
    scheduling::domain::format_ms,
    with_pool,
};
use picture::{Builder, Picture};

/// The templates, parsed once.
pub struct Pages {
    env: minijinja::Environment<'static>,
}

impl Pages {
    pub fn new() -> Pages {
        let mut env = minijinja::Environment::new();
        for (name, text) in [
            ("base.html", include_str!("../templates/base.html")),
            ("macros.html", include_str!("../templates/macros.html")),
            ("page.html", include_str!("../templates/page.html")),
            ("picture.html", include_str!("../templates/picture.html")),
            ("status.html", include_str!("../templates/status.html")),
        ] {
            env.add_template(name, text)
                .expect("the console's templates parse (tested)");
        }
        Pages { env }
    }
}

impl Default for Pages {
    fn default() -> Self {
        Pages::new()
    }
}

/// The console's routes.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/", get(status))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/incidents", get(incidents))
        .route("/incidents/{id}", get(incident))
        .route("/messages", get(messages))
        .route("/messages/{id}", get(message))
        .route("/runs/{id}", get(run))
        .route("/shadow", get(shadow))
        .route("/flags", get(flags))
        .route("/actions/retry/{job}", post(actions::retry))
        .route("/actions/gate", post(actions::gate))
        .route("/actions/pause", post(actions::pause))
}

/// A page that could not be made: a database error (500) or nothing by that id (404).
pub enum PageError {
    NotFound(String),
    Failed(String),
}

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        PageError::Failed(e.to_string())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::NotFound(what) => (StatusCode::NOT_FOUND, format!("{what}\n")),
            PageError::Failed(why) => {
                // The cause goes to the log, not to whoever asked.
                tracing::warn!(error = %why, "console page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page could not be made; the conductor's log says why\n".to_owned(),
                )
            }
        }
        .into_response()
    }
}

type Page = Result<Html<String>, PageError>;

/// A 404 naming `what` when the first section (the subject itself) has no row.
fn found(sections: &[Section], what: impl FnOnce() -> String) -> Result<(), PageError> {
    match sections.first() {
        Some(s) if !s.rows.is_empty() => Ok(()),
        _ => Err(PageError::NotFound(what())),
    }
}

/// A link from a column to a page: the column's value is appended to the prefix.
const LINKS: [(&str, &str); 7] = [
    ("job_id", "/jobs/"),
    ("id", "/jobs/"),
    ("incident_id", "/incidents/"),
    ("merged_into", "/incidents/"),
    ("message_id", "/messages/"),
    ("duplicate_of", "/messages/"),
    ("run_id", "/runs/"),
];

/// The job list's columns, in the order `conductor jobs` prints them.
const JOB_COLUMNS: &[&str] = &[
    "id",
    "kind",
    "subject",
    "state",
    "attempts",
    "repo",
    "branch",
    "pr_url",
    "issue_url",
];

/// What the generic page shows.
#[derive(Default, Serialize)]
struct Body {
    notice: Option<String>,
    actions: Vec<Action>,
    pictures: Vec<Picture>,
    sections: Vec<Section>,
    text: Option<String>,
}

#[derive(Serialize)]
struct Action {
    url: String,
    label: String,
    fields: serde_json::Value,
}

fn render(
    state: &HttpState,
    template: &str,
    nav: &str,
    title: &str,
    ctx: serde_json::Value,
) -> Page {
    let mut full = json!({
        "title": title,
        "nav": nav,
        "database": state.db.describe(),
        "operator": state.operator_token.is_some(),
        "links": LINKS.iter().map(|(c, p)| (c.to_string(), p.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
    });
    if let (Some(full), serde_json::Value::Object(more)) = (full.as_object_mut(), ctx) {
        full.extend(more);
    }
    let tmpl = state
        .pages
        .env
        .get_template(template)
        .map_err(|e| PageError::Failed(e.to_string()))?;
    tmpl.render(full).map(Html).map_err(|e| {
        // minijinja nests the cause of an error in an included template: name them all.
        let mut why = format!("rendering {template}: {e}");
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            why.push_str(&format!(": {c}"));
            cause = c.source();
        }
        PageError::Failed(why)
    })
}

fn page(state: &HttpState, nav: &str, title: &str, body: Body) -> Page {
    render(
        state,
        "page.html",
        nav,
        title,
        serde_json::to_value(body).expect("a page body serialises"),
    )
}

/// Rows of any serialisable list, one column per field, as a section: the columns named in
/// `first` lead, in that order, and the rest follow by name.
fn section_of<T: Serialize>(title: &str, items: &[T], first: &[&str]) -> Section {
    let rank = |k: &str| first.iter().position(|f| *f == k).unwrap_or(first.len());
    let rows = items
        .iter()
        .map(|item| match serde_json::to_value(item) {
            Ok(serde_json::Value::Object(map)) => {
                let mut row: Vec<(String, String)> = map
                    .into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            serde_json::Value::Null => String::new(),
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (k, v)
                    })
                    .collect();
                // Stable: the unranked keep serde_json's order, by name.
                row.sort_by_key(|(k, _)| rank(k));
                row
            }
            _ => Vec::new(),
        })
        .collect();
    Section {
        title: title.to_owned(),
        rows,
    }
}

/// A section whose `*_ms` columns are shown as times.
fn with_times(mut s: Section) -> Section {
    for row in &mut s.rows {
        for (column, value) in row.iter_mut() {
            if let (true, Ok(ms)) = (column.ends_with("_ms"), value.parse::<i64>()) {
                *value = format_ms(ms);
            }
        }
    }
    s
}

async fn status(State(state): State<HttpState>) -> Page {
    let h = crate::observe::status::read(&state.db, now_ms()).await?;
    let since = |s: &crate::intake::gate::GateState| {
        if s.since_ms > 0 {
            format!("since {} by {}", format_ms(s.since_ms), s.by)
        } else {
            "never set".into()
        }
    };
    let recent = crate::jobs::list(&state.db, false, 10).await?;
    render(
        &state,
        "status.html",
        "/",
        "Status",
        json!({
            "h": h,
            "gate_since": since(&h.switches.gate),
            "pause_since": since(&h.switches.pause),
            "replicas": with_times(section_of("replicas alive", &h.replicas, &["id", "version", "intake", "started_ms", "last_seen_ms"])),
            "jobs_by_state": section_of("jobs by state", &h.jobs_by_state, &["state", "jobs"]),
            "recent": section_of("latest jobs", &recent, JOB_COLUMNS),
        }),
    )
}

async fn jobs(State(state): State<HttpState>) -> Page {
    let jobs = crate::jobs::list(&state.db, false, 500).await?;
    page(
        &state,
        "/jobs",
        "Jobs",
        Body {
            sections: vec![section_of("jobs, newest first", &jobs, JOB_COLUMNS)],
            ..Body::default()
        },
    )
}

async fn job(State(state): State<HttpState>, Path(id): Path<i64>) -> Page {
    let sections = history::show(&state.db, &Subject::Job(id)).await?;
    found(&sections, || format!("no job {id}"))?;
    let steps = job_steps(&state.db, id).await?;
    let mut timeline = Builder::default();
    for s in &steps {
        let lane = timeline.lane(&s.step);
        let start = s.started_ms.unwrap_or(s.queued_ms);
        let end = s.finished_ms.unwrap_or_else(now_ms);
        let tip = format!(
            "{} (run {}): {}, {} attempt(s), {} → {}{}",
            s.step,
            s.run_id,
            s.status,
            s.attempts,
            format_ms(start),
            s.finished_ms.map(format_ms).unwrap_or_else(|| "now".into()),
            s.error
                .as_deref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        );
        timeline.bar(lane, start, end, &s.status, tip);
    }
    let mut all = vec![with_times(section_of(
        "steps",
        &steps,
        &[
            "step",
            "status",
            "attempts",
            "queued_ms",
            "started_ms",
            "finished_ms",
            "error",
        ],
    ))];
    all.splice(0..0, sections);
    all.push(section_of(
        "reports",
        &job_reports(&state.db, id).await?,
        &["attempt", "worker_id", "report"],
    ));
    page(
        &state,
        "/jobs",
        &format!("Job {id}"),
        Body {
            actions: vec![Action {
                url: format!("/actions/retry/{id}"),
                label: "Retry this job".into(),
                fields: json!({}),
            }],
            pictures: vec![timeline.build("step timeline")],
            sections: all,
            ..Body::default()
        },
    )
}

/// One step of a job's runs, for its timeline.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct StepRow {
    run_id: i64,
    step: String,
    status: String,
    attempts: i32,
    queued_ms: i64,
    started_ms: Option<i64>,
    finished_ms: Option<i64>,
    error: Option<String>,
}

/// What each attempt's agent reported, as its worker handed it over.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct ReportRow {
    attempt: i32,
    worker_id: String,
    report: Option<String>,
}

async fn job_reports(db: &Db, job: i64) -> Result<Vec<ReportRow>, Error> {
    const SQL: &str = "SELECT attempt, worker_id, report FROM job_attempts
        WHERE job_id = $1 AND report IS NOT NULL ORDER BY attempt";
    Ok(with_pool!(db, |p| sqlx::query_as(SQL)
        .bind(job)
        .fetch_all(p)
        .await?))
}

/// The steps of a job's current run (a retry starts another), in the order they queued.
async fn job_steps(db: &Db, job: i64) -> Result<Vec<StepRow>, Error> {
    const SQL: &str = "SELECT s.run_id, s.step, s.status, s.attempts, s.queued_ms, s.started_ms,
            s.finished_ms, s.error
        FROM steps s JOIN agent_jobs j ON j.run_id = s.run_id
        WHERE j.id = $1
        ORDER BY s.queued_ms, s.step";
    Ok(with_pool!(db, |p| sqlx::query_as(SQL)
        .bind(job)
        .fetch_all(p)
        .await?))
}

async fn incidents(State(state): State<HttpState>) -> Page {
    const SQL: &str = "SELECT * FROM incident_history ORDER BY incident_id DESC LIMIT 500";
    let s = history::query_section(&state.db, "incidents, newest first", SQL).await?;
    page(
        &state,
        "/incidents",
        "Incidents",
        Body {
            sections: vec![s],
            ..Body::default()
        },
    )
}

async fn incident(State(state): State<HttpState>, Path(id): Path<i64>) -> Page {
    let sections = history::show(&state.db, &Subject::Incident(id)).await?;
    found(&sections, || format!("no incident {id}"))?;
    let picture = incident_picture(&state.db, id).await?;
    page(
        &state,
        "/incidents",
        &format!("Incident {id}"),
        Body {
            notice: Some(
                "Alarms at their own event times, one lane per alarm name; dashed lines mark \
                 the incident's opening, each merge and the alarm that started its agent."
                    .into(),
            ),
            pictures: vec![picture],
            sections,
            ..Body::default()
        },
    )
}

/// An alarm of an incident, for its picture.
#[derive(sqlx::FromRow)]
struct AlarmDot {
    alarm_name: String,
    state: String,
    event_ms: i64,
    message_id: i64,
    from_incident: i64,
}

/// A merge or the agent, at the event time of the alarm that caused it.
#[derive(sqlx::FromRow)]
struct Marker {
    id: i64,
    event_ms: Option<i64>,
}

/// Lanes of an incident's picture before the rest share one.
const MAX_LANES: usize = 24;

async fn incident_picture(db: &Db, id: i64) -> Result<Picture, Error> {
    // A storm's incident draws its first alarms only: a picture, not a dump.
    const ALARMS: &str = "SELECT alarm_name, state, event_ms, message_id,
            COALESCE(original_incident_id, incident_id) AS from_incident
        FROM alarms WHERE incident_id = $1 ORDER BY event_ms, id LIMIT 2000";
    const MERGES: &str = "SELECT i.id, a.event_ms FROM incidents i
        LEFT JOIN alarms a ON a.message_id = i.merged_by_message_id
        WHERE i.merged_into = $1 ORDER BY i.id";
    const AGENT: &str = "SELECT j.id, a.event_ms FROM agent_jobs j
        LEFT JOIN alarms a ON a.message_id = j.message_id WHERE j.incident_id = $1";
    const OPENED: &str = "SELECT i.id, a.event_ms FROM incidents i
        LEFT JOIN alarms a ON a.message_id = i.opened_by_message_id WHERE i.id = $1";
    let alarms: Vec<AlarmDot> =
        with_pool!(db, |p| sqlx::query_as(ALARMS).bind(id).fetch_all(p).await?);
    let merges: Vec<Marker> =
        with_pool!(db, |p| sqlx::query_as(MERGES).bind(id).fetch_all(p).await?);
    let agent: Vec<Marker> =
        with_pool!(db, |p| sqlx::query_as(AGENT).bind(id).fetch_all(p).await?);
    let opened: Vec<Marker> =
        with_pool!(db, |p| sqlx::query_as(OPENED).bind(id).fetch_all(p).await?);
    let mut b = Builder::default();
    for a in &alarms {
        // One lane per alarm name, up to MAX_LANES; the rest share the last.
        let lane = if b.lanes() < MAX_LANES || b.has_lane(&a.alarm_name) {
            b.lane(&a.alarm_name)
        } else {
            b.lane("(other alarms)")
        };
        let class = if a.from_incident != id {
            "merged"
        } else if matches!(a.state.as_str(), "ALARM" | "OK") {
            a.state.as_str()
        } else {
            "other"
        };
        let tip = format!(
            "{} {} at {} (message {}{})",
            a.alarm_name,
            a.state,
            format_ms(a.event_ms),
            a.message_id,
            if a.from_incident != id {
                format!(", from incident {}", a.from_incident)
            } else {
                String::new()
            }
        );
        b.dot(lane, a.event_ms, class, tip);
    }
    for o in opened.iter().filter_map(|m| m.event_ms) {
        b.rule(o, "opened".into(), "opened");
    }
    for m in &merges {
        if let Some(at) = m.event_ms {
            b.rule(at, format!("merged #{}", m.id), "merge");
        }
    }
    for j in &agent {
        if let Some(at) = j.event_ms {
            b.rule(at, format!("agent: job {}", j.id), "agent");
        }
    }
    Ok(b.build(&format!("alarms of incident {id} over time")))
}

async fn messages(State(state): State<HttpState>) -> Page {
    let sections = history::show(&state.db, &Subject::Recent(500)).await?;
    page(
        &state,
        "/messages",
        "Messages",
        Body {
            sections,
            ..Body::default()
        },
    )
}

/// A workflow run: its steps, each with its times, attempts and error.
async fn run(State(state): State<HttpState>, Path(id): Path<i64>) -> Page {
    let sections = history::show(&state.db, &Subject::Run(id)).await?;
    found(&sections, || format!("no run {id}"))?;
    page(
        &state,
        "/messages",
        &format!("Run {id}"),
        Body {
            sections,
            ..Body::default()
        },
    )
}

/// A message by its internal id (what every link carries; a transport id that looks like a
/// number never stands in for it): its history row and its body.
async fn message(State(state): State<HttpState>, Path(message_id): Path<i64>) -> Page {
    let sections = history::show(&state.db, &Subject::MessageId(message_id)).await?;
    found(&sections, || format!("no message {message_id}"))?;
    let body = message_body(&state.db, message_id).await?;
    let mut sections = sections;
    if let Some(run) = message_run(&state.db, message_id).await? {
        sections.extend(history::show(&state.db, &Subject::Run(run)).await?);
    }
    page(
        &state,
        "/messages",
        &format!("Message {message_id}"),
        Body {
            sections,
            text: body,
            ..Body::default()
        },
    )
}

/// The message workflow run that stored a message: the run whose ingest step's output names
/// it (`{"ingest":"new","message_id":N}`, or `..."message_id":N,"original_id":M}` for a reused
/// transport id).
async fn message_run(db: &Db, id: i64) -> Result<Option<i64>, Error> {
    const SQL: &str = "SELECT MIN(run_id) FROM steps WHERE step = 'ingest'
        AND (output LIKE '%\"message_id\":' || CAST($1 AS TEXT) || '}'
          OR output LIKE '%\"message_id\":' || CAST($1 AS TEXT) || ',%')";
    Ok(with_pool!(db, |p| sqlx::query_scalar(SQL)
        .bind(id)
        .fetch_one(p)
        .await?))
}

async fn message_body(db: &Db, id: i64) -> Result<Option<String>, Error> {
    const SQL: &str = "SELECT body FROM messages WHERE id = $1";
    let body: Option<String> = with_pool!(db, |p| sqlx::query_scalar(SQL)
        .bind(id)
        .fetch_optional(p)
        .await?);
    // Pretty when it is JSON; as stored otherwise (control characters shown escaped).
    Ok(
        body.map(|b| match serde_json::from_str::<serde_json::Value>(&b) {
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or(b),
            Err(_) => crate::scheduling::domain::escape_controls(&b),
        }),
    )
}

async fn shadow(State(state): State<HttpState>) -> Page {
    let report = crate::scheduling::shadow::report(&state.db, None, 0, 50).await?;
    page(
        &state,
        "/shadow",
        "Shadow evaluation",
        Body {
            sections: vec![
                section_of("candidates", &report.candidates, &["candidate"]),
                with_times(section_of(
                    "latest divergences",
                    &report.divergences,
                    &["message_id", "transport_id", "candidate", "verdict"],
                )),
            ],
            ..Body::default()
        },
    )
}

async fn flags(State(state): State<HttpState>) -> Page {
    let stored = crate::scheduling::flags::read(&state.db).await?;
    let mut stored: Vec<_> = stored
        .into_iter()
        .map(|(name, s)| json!({"name": name, "value": s.value, "updated_ms": s.updated_ms, "updated_by": s.updated_by}))
        .collect();
    stored.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let switches = crate::intake::gate::switches(&state.db).await?;
    let switches = [
        json!({"name": "gate", "state": if switches.gate.closed {"closed"} else {"open"}, "by": switches.gate.by, "since_ms": switches.gate.since_ms}),
        json!({"name": "pause", "state": if switches.pause.closed {"paused"} else {"running"}, "by": switches.pause.by, "since_ms": switches.pause.since_ms}),
    ];
    let history = crate::scheduling::flags::history(&state.db, 200).await?;
    page(
        &state,
        "/flags",
        "Flags & gate",
        Body {
            notice: Some(
                "Flags as stored; a replica's configuration may pin a flag over these (see `conductor flags` on that replica).".into(),
            ),
            sections: vec![
                with_times(section_of("intake switches", &switches, &["name", "state", "by", "since_ms"])),
                with_times(section_of("flags", &stored, &["name", "value", "updated_by", "updated_ms"])),
                with_times(section_of("changes, newest first", &history, &["name", "old_value", "new_value", "changed_by", "changed_ms"])),
            ],
            ..Body::default()
        },
    )
}
