//! `conductor bench decide --peers`: the limits Conductor's pipeline is read against, measured
//! in the same run on the same Postgres — the pgbench reference transaction
//! (`docs/bench/pgbench-decide.sql`) and two peer job queues doing a one-INSERT job
//! (`docs/bench/peers/*.sh`, each installing its pinned peer into a scratch directory). Each
//! limit's own health is checked before its figure is trusted: pgbench's failed and aborted
//! transactions, and each peer script's count of rows written.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use conductor::bench::Figure;

/// The pgbench reference at `clients`: its setup, then `seconds` of the decide-shaped script.
/// Fails if any transaction failed or a client aborted (a broken script stops early and
/// reports a rate it never sustained).
pub fn pgbench(docs: &Path, url: &str, clients: usize, seconds: u64) -> Result<Figure> {
    let setup = docs.join("pgbench-setup.sql");
    let script = docs.join("pgbench-decide.sql");
    let out = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f"])
        .arg(&setup)
        .output()
        .context("running psql (is the PostgreSQL client installed?)")?;
    if !out.status.success() {
        bail!(
            "pgbench setup {} failed: {}",
            setup.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .context("running pgbench (is the PostgreSQL client installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("aborted") {
        bail!(
            "pgbench did not run cleanly (exit {:?}): {}",
            out.status.code(),
            stderr.lines().last().unwrap_or_default()
        );
    }
    let number = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.trim_start_matches('=').trim().parse().ok())
    };
    let failed = number("number of failed transactions:").unwrap_or(0.0);
    let done = number("number of transactions actually processed:")
        .context("pgbench printed no transaction count")?;
    if failed > 0.0 {
        bail!(
            "pgbench: {failed} transactions failed; the script is broken, its rate means nothing"
        );
    }
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .context("pgbench printed no tps")?;
    Ok(Figure {
        name: format!("limit: pgbench decide-shaped script, {clients} clients"),
        events: done as usize,
        seconds: done / tps.max(1e-9),
        per_second: tps,
        latency_ms: None,
    })
}

/// What a peer script prints as its last line.
#[derive(Debug, serde::Deserialize)]
struct PeerLine {
    peer: String,
    version: String,
    jobs: usize,
    concurrency: usize,
    seconds: f64,
    per_second: f64,
}

/// Runs every `*.sh` under `dir` against `url` and reads each one's figure.
pub fn peers(dir: &Path, url: &str, jobs: usize, concurrency: usize) -> Result<Vec<Figure>> {
    let mut scripts: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.sort();
    let mut out = Vec::new();
    for script in scripts {
        let run = Command::new("bash")
            .arg(&script)
            .args(["--postgres", url, "--jobs", &jobs.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        let stdout = String::from_utf8_lossy(&run.stdout);
        if !run.status.success() {
            bail!("{} failed (exit {:?})", script.display(), run.status.code());
        }
        let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
        let line: PeerLine = last
            .and_then(|l| serde_json::from_str(l).ok())
            .with_context(|| format!("{} printed no figure line", script.display()))?;
        if line.jobs != jobs {
            bail!("{} ran {} jobs, not {jobs}", script.display(), line.jobs);
        }
        out.push(Figure {
            name: format!(
                "peer: {} {}, one INSERT a job, {} at once",
                line.peer, line.version, line.concurrency
            ),
            events: line.jobs,
            seconds: line.seconds,
            per_second: line.per_second,
            latency_ms: None,
        });
    }
    Ok(out)
}
