//! The task files an attempt's worker receives: `TASK.md` and `AGENTS.md` rendered from
//! editable templates, and `job.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{config::Config, error::Error, jobs::TaskFile};

/// Whether `name` is one plain file name (letters, digits, `.`, `-`, `_`; not `.` or `..`):
/// the only task file names either side of the protocol accepts, so none can leave the
/// worker's directory.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// `job.json`: what the worker needs besides the prompt files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub job_id: i64,
    pub attempt: i32,
    pub worker_id: String,
    pub kind: String,
    pub repo: String,
    pub base: String,
    /// The agent's branch is `<branch_prefix><slug of its title>`, unless it continues one.
    pub branch_prefix: String,
    /// Earlier work this attempt builds on: it starts from that branch and pushes to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuing: Option<Continuing>,
}

/// A branch of the conductor's, pushed by an earlier attempt or run of the same job and not
/// merged, that a new attempt starts from and pushes to (updating its pull request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuing {
    pub branch: String,
    /// Its open pull request, when it has one.
    pub pull_request: Option<String>,
}

const BUILT_IN: &[(&str, &str, &str)] = &[
    (
        "ticket",
        "TASK.md",
        include_str!("../../templates/ticket/TASK.md"),
    ),
    (
        "ticket",
        "AGENTS.md",
        include_str!("../../templates/ticket/AGENTS.md"),
    ),
    (
        "incident",
        "TASK.md",
        include_str!("../../templates/incident/TASK.md"),
    ),
    (
        "incident",
        "AGENTS.md",
        include_str!("../../templates/incident/AGENTS.md"),
    ),
];

fn template(dir: Option<&Path>, kind: &str, name: &str) -> Result<String, Error> {
    match dir {
        Some(dir) => {
            let path = dir.join(kind).join(name);
            std::fs::read_to_string(&path)
                .map_err(|e| Error::Config(format!("template {}: {e}", path.display())))
        }
        None => BUILT_IN
            .iter()
            .find(|(k, n, _)| *k == kind && *n == name)
            .map(|(_, _, t)| t.to_string())
            .ok_or_else(|| Error::Config(format!("no built-in template {kind}/{name}"))),
    }
}

/// Renders the attempt's files. Fixed per attempt: stored with it, re-sent unchanged.
pub fn render(config: &Config, spec: &JobSpec, subject: &Value) -> Result<Vec<TaskFile>, Error> {
    let mut ctx = subject.clone();
    ctx["job"] = json!({"id": spec.job_id, "attempt": spec.attempt, "worker_id": spec.worker_id, "kind": spec.kind});
    ctx["repo"] = json!({"url": spec.repo, "base": spec.base});
    ctx["continuing"] = json!(spec.continuing);
    let env = minijinja::Environment::new();
    let mut files = Vec::new();
    for name in ["TASK.md", "AGENTS.md"] {
        let source = template(config.templates.as_deref(), &spec.kind, name)?;
        let text = env
            .render_str(&source, &ctx)
            .map_err(|e| Error::Config(format!("template {}/{name}: {e}", spec.kind)))?;
        files.push(TaskFile {
            name: name.into(),
            content: text,
        });
    }
    files.push(TaskFile {
        name: "job.json".into(),
        content: serde_json::to_string_pretty(spec).expect("JobSpec serialises"),
    });
    let total: u64 = files.iter().map(|f| f.content.len() as u64).sum();
    if total > config.jobs.max_task_bytes {
        return Err(Error::Invalid(format!(
            "task files of job {} are {total} bytes, over jobs.max_task_bytes = {}",
            spec.job_id, config.jobs.max_task_bytes
        )));
    }
    Ok(files)
}

/// The branch an attempt was told to continue, from its stored task files (a JSON list of
/// files, `job.json` among them); None when it starts fresh.
pub fn continued_branch(files: &str) -> Option<String> {
    let files: Vec<TaskFile> = serde_json::from_str(files).ok()?;
    let spec = files.iter().find(|f| f.name == "job.json")?;
    let spec: JobSpec = serde_json::from_str(&spec.content).ok()?;
    spec.continuing.map(|c| c.branch)
}

/// `text` with every occurrence of each secret replaced by `[redacted]`. Values under 8
/// characters are skipped: too short to be a real token, and they would mangle ordinary text.
pub fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 8)
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "[redacted]"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_cuts_every_occurrence_of_long_secrets_only() {
        let secrets = vec!["0123456789abcdef".to_owned(), "abc".to_owned()];
        assert_eq!(
            super::redact("t=0123456789abcdef; again 0123456789abcdef; abc", &secrets),
            "t=[redacted]; again [redacted]; abc"
        );
    }

    use super::*;

    #[test]
    fn built_in_templates_render_a_ticket() {
        let spec = JobSpec {
            job_id: 7,
            attempt: 1,
            worker_id: "w".into(),
            kind: "ticket".into(),
            repo: "/r.git".into(),
            base: "main".into(),
            branch_prefix: "conductor/w/".into(),
            continuing: None,
        };
        let subject = json!({"ticket": {"key": "OPS-1", "summary": "Fix it", "description": "Broken", "labels": ["a"], "priority": null}});
        let files = render(&Config::default(), &spec, &subject).unwrap();
        assert!(files[0].content.contains("OPS-1: Fix it"));
        assert!(files[1].content.contains("WAS_JOB_SUCCESSFUL"));
        let mut small = Config::default();
        small.jobs.max_task_bytes = 10;
        assert!(render(&small, &spec, &subject)
            .unwrap_err()
            .to_string()
            .contains("max_task_bytes"));
    }
}
