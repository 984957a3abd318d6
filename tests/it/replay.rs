//! The scenario CLI and the replay it rests on, against real SQLite files and Postgres.

use crate::common;

use conductor::{intake::inbox, scenario::replay, scheduling::policy::Policy};
use serde_json::Value;

fn expected_small() -> replay::Summary {
    replay::Summary {
        events: 11,
        redelivered: 1,
        rejected: 1,
        ticket_spawns: 1,
        ticket_duplicates: 1,
        incident_spawns: 3,
        chained: 5,
        merged: 0,
        ignored: 0,
        alarm_duplicates: 0,
        incidents: 3,
    }
}

#[tokio::test]
async fn replay_small_on_sqlite_and_postgres() {
    let messages = inbox::read_jsonl(&common::samples().join("replay-small.jsonl")).unwrap();
    let (sqlite, _, _dir) = common::sqlite().await;
    let (pg, _guard) = common::postgres("replay_small").await;
    for db in [&sqlite, &pg] {
        let report = replay::replay(db, &Policy::default(), &messages, 5)
            .await
            .unwrap();
        assert_eq!(report.summary, expected_small(), "{:?}", db.backend());
        assert_eq!(report.decisions.len(), 12);
        assert_eq!(report.decisions[10].decision, "redelivered");
        assert_eq!(report.decisions[11].decision, "rejected");
        assert_eq!(report.incidents.len(), 3);
        assert_eq!(report.incidents[0].transport_ids.len(), 6);
        // Every decision is persisted: one row per distinct message.
        assert_eq!(
            common::count(db, "SELECT COUNT(*) FROM decisions").await,
            11
        );
        assert_eq!(
            common::count(db, "SELECT SUM(deliveries) FROM messages").await,
            12
        );
    }
}

#[test]
fn replay_cli_json_document() {
    let file = common::samples().join("replay-small.jsonl");
    let (status, stdout, stderr) = common::conductor(
        &[
            "scenario",
            "replay",
            "--events",
            file.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert!(status.success(), "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    let summary = &doc["summary"];
    for (key, want) in [
        ("events", 11),
        ("redelivered", 1),
        ("rejected", 1),
        ("ticket_spawns", 1),
        ("ticket_duplicates", 1),
        ("incident_spawns", 3),
        ("chained", 5),
        ("merged", 0),
        ("ignored", 0),
        ("alarm_duplicates", 0),
        ("incidents", 3),
    ] {
        assert_eq!(summary[key].as_u64(), Some(want), "summary.{key}");
    }
    let decisions = doc["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 12);
    assert_eq!(decisions[0]["decision"], "spawn");
    assert_eq!(decisions[0]["kind"], "alarm");
    assert_eq!(decisions[0]["account"], "210987654321");
    assert_eq!(decisions[8]["ticket_key"], "PAY-42");
    assert_eq!(decisions[9]["decision"], "duplicate");
    assert!(decisions[11]["reason"]
        .as_str()
        .unwrap()
        .starts_with("not JSON"));
    let incidents = doc["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 3);
    assert_eq!(incidents[2]["account"], "310987654321");
    assert_eq!(
        incidents[2]["message_ids"][0],
        "0d2329d9-fa09-ca46-7673-89669b02a56d"
    );
}

/// `scenario replay --json | head -1`: the reader goes away after one line and the replay
/// ends quietly, as a Unix tool does, with no panic on the closed pipe.
#[test]
fn replay_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    // Output well past a pipe's 64 KiB buffer (about 600 KB), so the reader's going away is
    // felt by the writer.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("mixed.jsonl");
    let (status, _, stderr) = common::conductor(
        &[
            "scenario",
            "gen",
            "--out",
            file.to_str().unwrap(),
            "mixed",
            "--count",
            "3000",
        ],
        &[],
    );
    assert!(status.success(), "{stderr}");
    let mut child = std::process::Command::new(common::conductor_bin())
        .args([
            "scenario",
            "replay",
            "--events",
            file.to_str().unwrap(),
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The document streams: its decisions come first, each as it is decided.
    assert_eq!(first.trim(), "{\"decisions\": [");
    // The reader is gone (its end of the pipe dropped with the BufReader).
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

/// The streamed document is the same whatever the batch: the virtual clock and the counts
/// carry from one batch to the next.
#[test]
fn replay_cli_json_is_the_same_in_small_batches() {
    let file = common::samples().join("replay-small.jsonl");
    let replay = |batch: &str| {
        let (status, stdout, stderr) = common::conductor(
            &[
                "scenario",
                "replay",
                "--events",
                file.to_str().unwrap(),
                "--json",
                "--batch",
                batch,
            ],
            &[],
        );
        assert!(status.success(), "{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let whole = replay("10000");
    assert_eq!(replay("5"), whole);
    assert_eq!(replay("1"), whole);
}

#[test]
fn replay_cli_names_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.jsonl");
    std::fs::write(
        &file,
        "{\"message_id\": \"a\", \"body\": \"{}\"}\n{\"id\": 3}\n",
    )
    .unwrap();
    let (status, _, stderr) = common::conductor(
        &["scenario", "replay", "--events", file.to_str().unwrap()],
        &[],
    );
    assert!(!status.success());
    assert!(stderr.contains("bad.jsonl:2"), "{stderr}");
}

#[test]
fn shipped_scenarios_pass_and_a_wrong_expectation_fails() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let mut args = vec!["scenario", "run"];
    args.extend(files.iter().map(String::as_str));
    let (status, stdout, stderr) = common::conductor(&args, &[]);
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("{} passed, 0 failed", files.len())),
        "{stdout}"
    );

    // A wrong expectation fails the run, naming what was expected and what came.
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("wrong.toml");
    let fails_with = |scenario: &str, needle: &str| {
        std::fs::write(&wrong, scenario).unwrap();
        let (status, stdout, _) =
            common::conductor(&["scenario", "run", wrong.to_str().unwrap()], &[]);
        assert!(!status.success());
        assert!(stdout.contains(needle), "{stdout}");
    };
    fails_with(
        "description = \"expects too many spawns\"\n[events.generate]\nkind = \"alarm-storm\"\nalarms = 10\naccounts = 2\nspan = \"1h\"\n[expect]\nincident_spawns = 3\n",
        "incident_spawns: expected 3, got 2",
    );
    // A wrong shadow verdict expectation fails too, naming the verdict.
    fails_with(
        "description = \"a 30-minute candidate never diverges (wrong)\"\ncandidate = \"window=30m\"\n[events.generate]\nkind = \"alarm-storm\"\nalarms = 40\naccounts = 2\nspan = \"3h\"\nseed = 1\n[expect.verdicts]\nAGREE = 40\n",
        "verdict AGREE: expected 40, got ",
    );
}

#[test]
fn gen_is_reproducible_and_replayable() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    for out in [&a, &b] {
        let (status, _, stderr) = common::conductor(
            &[
                "scenario",
                "gen",
                "--out",
                out.to_str().unwrap(),
                "ticket-flood",
                "--rate",
                "10",
                "--duration",
                "60s",
                "--duplicates",
                "0.3",
                "--seed",
                "4",
            ],
            &[],
        );
        assert!(status.success(), "{stderr}");
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let (status, stdout, _) = common::conductor(
        &[
            "scenario",
            "replay",
            "--events",
            a.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert!(status.success());
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    let s = &doc["summary"];
    assert_eq!(s["events"], 600);
    assert_eq!(
        s["ticket_spawns"].as_u64().unwrap() + s["ticket_duplicates"].as_u64().unwrap(),
        600
    );
    assert!(s["ticket_duplicates"].as_u64().unwrap() > 100);
}

#[tokio::test]
async fn from_database_redecides_and_reports_differences() {
    let (db, url, _dir) = common::sqlite().await;
    let messages = inbox::read_jsonl(&common::samples().join("replay-small.jsonl")).unwrap();
    // Stored with a 5-minute window: the storm's alarms, 10 minutes apart, each opened an incident.
    replay::replay(
        &db,
        &Policy::with_window(std::time::Duration::from_secs(300)),
        &messages,
        100,
    )
    .await
    .unwrap();
    db.close().await;
    let (status, stdout, stderr) = common::conductor(
        &["scenario", "replay", "--from-database", &url, "--json"],
        &[],
    );
    assert!(status.success(), "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    let diffs = doc["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 5, "{doc}");
    assert!(
        diffs
            .iter()
            .all(|d| d["stored"] == "spawn" && d["replayed"] == "chained"),
        "{doc}"
    );
    let (status, stdout, _) = common::conductor(
        &[
            "scenario",
            "replay",
            "--from-database",
            &url,
            "--window",
            "5m",
            "--json",
        ],
        &[],
    );
    assert!(status.success());
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["differences"].as_array().unwrap().len(), 0, "{doc}");
}
