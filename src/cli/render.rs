//! Tables for the terminal. What an agent or a sender wrote is printed with its control
//! characters escaped.

use conductor::{engine, jobs, scheduling::domain::escape_controls, scheduling::flags};

/// Failed workflow runs, one line each.
pub fn failed_runs(runs: &[engine::FailedRun]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for r in runs {
        let _ = writeln!(
            out,
            "  run {:<6} {:<8} step {:<8} {}",
            r.run_id,
            r.workflow,
            r.step.as_deref().unwrap_or("-"),
            escape_controls(r.error.as_deref().unwrap_or(""))
        );
    }
    out
}

/// The jobs table.
pub fn jobs(list: &[jobs::JobLine]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5} {:<8} {:<14} {:<12} {:>8}  {:<44} result",
        "job", "kind", "subject", "state", "attempts", "branch"
    );
    for j in list {
        // A waiting job says why; an ended one what it produced.
        let result = j
            .wait_reason
            .clone()
            .filter(|_| j.state == "waiting")
            .or_else(|| j.pr_url.clone())
            .or_else(|| j.issue_url.clone())
            .or_else(|| j.outcome.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:>5} {:<8} {:<14} {:<12} {:>8}  {:<44} {}",
            j.id,
            j.kind,
            // What an agent or a sender wrote is printed with its control characters escaped.
            escape_controls(&j.subject),
            j.state,
            j.attempts,
            escape_controls(&j.branch.clone().unwrap_or_default()),
            escape_controls(&result)
        );
    }
    out
}

pub fn resolved(r: &flags::Resolved) -> String {
    let source = |s: flags::Source| match s {
        flags::Source::Config => "pinned by configuration",
        flags::Source::Database => "database",
        flags::Source::Default => "default",
    };
    format!(
        "incidents: {} ({})\npolicy: {} ({})\ncandidate: {} ({})\n",
        r.incidents.value.as_str(),
        source(r.incidents.source),
        r.policy.value,
        source(r.policy.source),
        r.candidate.value.as_deref().unwrap_or(flags::NONE),
        source(r.candidate.source)
    )
}
