//! Scenario files (`scenarios/*.toml`): seed state, events (a file, inline, or a generator) and
//! expectations, run by `conductor scenario run`. See `scenarios/README.md` for the format.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    gen::{generate, GenSpec},
    replay::{replay_with, Report, StoreMode, Summary},
};
use crate::{
    db::Db,
    error::Error,
    intake::inbox,
    scheduling::domain::RawMessage,
    scheduling::flags::{Incidents, Scheduling},
    scheduling::policy::{Policy, PolicySpec},
    scheduling::shadow::Verdict,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub description: String,
    /// Chaining window of the policy under test (default 1h).
    #[serde(default)]
    pub window: Option<String>,
    /// The policy under test as an inline spec (`window=30m,max_age=6h`); instead of `window`.
    #[serde(default)]
    pub policy: Option<String>,
    /// A candidate evaluated in shadow beside it, as an inline spec.
    #[serde(default)]
    pub candidate: Option<String>,
    /// The `incidents` flag: off, shadow or on (default).
    #[serde(default)]
    pub incidents: Option<String>,
    #[serde(default)]
    pub seed: Option<Events>,
    pub events: Events,
    #[serde(default)]
    pub expect: Expect,
}

/// A message stream: any combination of a JSONL file, inline messages and a generator, in
/// that order.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Events {
    /// A JSONL replay file, relative to the scenario file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub inline: Vec<InlineEvent>,
    #[serde(default)]
    pub generate: Option<GenSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineEvent {
    /// The transport's id (`message_id` in the file, as in replay lines).
    #[serde(rename = "message_id")]
    pub transport_id: String,
    /// The raw body, or
    #[serde(default)]
    pub body: Option<String>,
    /// a file holding it, relative to the scenario file.
    #[serde(default)]
    pub body_file: Option<PathBuf>,
}

/// Expected counts (any subset of the summary; unknown names are refused in [`run_file`]) and
/// per-message decisions.
#[derive(Debug, Default, Deserialize)]
pub struct Expect {
    #[serde(flatten)]
    pub counts: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub decision: Vec<ExpectDecision>,
    /// Shadow verdict counts over the events (not the seed): AGREE, DIVERGE, ...
    #[serde(default)]
    pub verdicts: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectDecision {
    #[serde(rename = "message_id")]
    pub transport_id: String,
    pub decision: String,
    #[serde(default)]
    pub incident: Option<i64>,
}

impl Events {
    fn load(&self, dir: &Path) -> Result<Vec<RawMessage>, Error> {
        let mut out = Vec::new();
        if let Some(file) = &self.file {
            out.extend(inbox::read_jsonl(&dir.join(file))?);
        }
        for e in &self.inline {
            let body = match (&e.body, &e.body_file) {
                (Some(b), None) => b.clone(),
                (None, Some(f)) => std::fs::read_to_string(dir.join(f)).map_err(|err| {
                    Error::Invalid(format!(
                        "event {}: cannot read {}: {err}",
                        e.transport_id,
                        f.display()
                    ))
                })?,
                _ => {
                    return Err(Error::Invalid(format!(
                        "event {}: give exactly one of body, body_file",
                        e.transport_id
                    )))
                }
            };
            out.push(RawMessage {
                transport_id: e.transport_id.clone(),
                body,
                raw: None,
            });
        }
        if let Some(spec) = &self.generate {
            out.extend(generate(spec).map_err(Error::Invalid)?);
        }
        Ok(out)
    }
}

/// The outcome of one scenario: its report and every expectation that failed.
#[derive(Debug)]
pub struct Outcome {
    pub path: PathBuf,
    pub description: String,
    pub report: Report,
    pub failures: Vec<String>,
}

/// Loads and runs a scenario into `db` (which should be fresh).
pub async fn run_file(path: &Path, db: &Db) -> Result<Outcome, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let sc: ScenarioFile =
        toml::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let bad = |what: String| Error::Invalid(format!("{}: {what}", path.display()));
    let sched = scheduling_of(&sc).map_err(bad)?;
    check_expectations(&sc.expect, sched.candidate.is_some()).map_err(bad)?;
    if let Some(seed) = &sc.seed {
        replay_with(db, &sched, &seed.load(dir)?, 1000, StoreMode::Auto).await?;
    }
    let seeded = crate::scheduling::shadow::evaluations_up_to(db).await?;
    let events = sc.events.load(dir)?;
    let report = replay_with(db, &sched, &events, 1000, StoreMode::Auto).await?;
    let verdicts = if sc.expect.verdicts.is_empty() {
        Default::default()
    } else {
        crate::scheduling::shadow::verdict_counts(db, seeded).await?
    };
    let failures = failures(&sc.expect, &report, &verdicts);
    Ok(Outcome {
        path: path.to_owned(),
        description: sc.description,
        report,
        failures,
    })
}

/// The scheduling a scenario asks for: its window or policy, its candidate, its `incidents`.
fn scheduling_of(sc: &ScenarioFile) -> Result<Scheduling, String> {
    let policy = match (&sc.window, &sc.policy) {
        (Some(_), Some(_)) => return Err("give window or policy, not both".into()),
        (Some(w), None) => Policy::with_window(
            humantime::parse_duration(w).map_err(|e| format!("window {w:?}: {e}"))?,
        ),
        (None, Some(p)) => Policy::inline(PolicySpec::parse(p).map_err(|e| e.to_string())?),
        (None, None) => Policy::default(),
    };
    let candidate = sc
        .candidate
        .as_deref()
        .map(|c| PolicySpec::parse(c).map(Policy::inline))
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(Scheduling {
        incidents: match &sc.incidents {
            Some(i) => Incidents::parse(i).map_err(|e| e.to_string())?,
            None => Incidents::On,
        },
        candidate: candidate.map(Ok),
        policy,
        candidate_timeout: crate::scheduling::flags::DEFAULT_SHADOW_TIMEOUT,
    })
}

/// Refuses expectations that could never be met: verdicts without a candidate, unknown
/// verdict or count names.
fn check_expectations(expect: &Expect, has_candidate: bool) -> Result<(), String> {
    if !has_candidate && !expect.verdicts.is_empty() {
        return Err("expect.verdicts needs a candidate".into());
    }
    for key in expect.verdicts.keys() {
        if !Verdict::ALL.iter().any(|v| v.as_str() == key) {
            return Err(format!(
                "unknown verdict {key:?}; known: AGREE, DIVERGE, CANDIDATE_EMPTY, AUTHORITATIVE_EMPTY, ERROR"
            ));
        }
    }
    let known: Vec<String> = serde_json::to_value(Summary::default())
        .expect("summary serialises")
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    for key in expect.counts.keys() {
        if !known.contains(key) {
            return Err(format!(
                "unknown expectation {key:?}; known: {}",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

/// Every expectation the replay did not meet, one line each.
fn failures(
    expect: &Expect,
    report: &Report,
    verdicts: &std::collections::BTreeMap<String, i64>,
) -> Vec<String> {
    let summary = serde_json::to_value(&report.summary).expect("summary serialises");
    let mut failures = Vec::new();
    for (key, want) in &expect.counts {
        let got = summary[key].as_u64().unwrap_or_default();
        if got != *want {
            failures.push(format!("{key}: expected {want}, got {got}"));
        }
    }
    for (verdict, want) in &expect.verdicts {
        let n = verdicts.get(verdict).copied().unwrap_or(0);
        if n != *want {
            failures.push(format!("verdict {verdict}: expected {want}, got {n}"));
        }
    }
    for want in &expect.decision {
        match report
            .decisions
            .iter()
            .find(|l| l.transport_id == want.transport_id)
        {
            None => failures.push(format!("message {}: not in the events", want.transport_id)),
            Some(l) if l.decision != want.decision => failures.push(format!(
                "message {}: expected {}, got {}",
                want.transport_id, want.decision, l.decision
            )),
            Some(l) if want.incident.is_some() && l.incident != want.incident => {
                failures.push(format!(
                    "message {}: expected incident {:?}, got {:?}",
                    want.transport_id, want.incident, l.incident
                ))
            }
            Some(_) => {}
        }
    }
    failures
}
