//! The soak at CI size (docs/design.md section 6): two `conductor run` replicas on one Postgres,
//! SIGKILLed and restarted ten times while 500 generated messages flow through the inbox and
//! the scripted agent works in real repositories. Nothing may be lost or done twice.

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_killed_ten_times_lose_nothing_and_do_nothing_twice() {
    let (db, pg) = common::postgres("soak").await;
    db.close().await;
    let dir = tempfile::tempdir().unwrap();
    let (status, out, err) = common::conductor(
        &[
            "soak",
            "--database",
            &pg.url,
            "--messages",
            "500",
            "--kills",
            "10",
            "--replicas",
            "2",
            "--seed",
            "11",
            "--json",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "soak printed no report ({e}): {out}\n{}",
            common::jobs::tail(&err, 4000)
        )
    });
    let n = |k: &str| report[k].as_i64().unwrap_or(-1);
    assert_eq!(n("kills"), 10, "{report}");
    assert_eq!(n("lost_messages"), 0, "{report}");
    assert_eq!(n("duplicate_spawns"), 0, "{report}");
    assert_eq!(n("extra_attempts"), 0, "{report}");
    assert_eq!(n("duplicate_pull_requests"), 0, "{report}");
    assert_eq!(n("orphaned_workers"), 0, "{report}");
    assert_eq!(report["mismatches"], serde_json::json!([]), "{report}");
    // Every job the sequential replay spawns ran once and opened its pull request.
    let expected = n("expected_ticket_spawns") + n("expected_incident_spawns");
    assert!(expected > 20, "{report}");
    assert_eq!(n("jobs"), expected, "{report}");
    assert_eq!(n("jobs_succeeded"), expected, "{report}");
    assert_eq!(n("pull_requests"), expected, "{report}");
    assert_eq!(
        report["replica_exit_codes"],
        serde_json::json!([0, 0]),
        "each replica drained and exited 0: {report}"
    );
    assert!(status.success(), "{err}");
}

#[test]
fn a_soak_refuses_a_database_that_is_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("c.db").display());
    let sample = common::samples().join("ticket-bare.json");
    let (status, _, err) = common::conductor(
        &["submit", "--database", &url, sample.to_str().unwrap()],
        &[],
    );
    assert!(status.success(), "{err}");
    let (status, _, err) = common::conductor(
        &[
            "soak",
            "--database",
            &url,
            "--dir",
            dir.path().join("s").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!status.success());
    assert!(err.contains("needs an empty database"), "{err}");
}
