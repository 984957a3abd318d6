//! Job history: every query in docs/queries.md runs on the backend it is written for, and
//! `conductor history` prints the views.

use crate::common;

use conductor::{db::Backend, intake::inbox, scenario::replay, scheduling::policy::Policy};

/// (backend it is for, or None for both; statement) for every SQL statement in the doc.
fn doc_queries() -> Vec<(Option<Backend>, String)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/queries.md")).unwrap();
    let mut out = Vec::new();
    for block in doc.split("```sql").skip(1) {
        let block = block.split("```").next().unwrap();
        let mut backend = None;
        let mut stmt = String::new();
        for line in block.lines() {
            match line.trim() {
                l if l.starts_with("-- SQLite") => backend = Some(Backend::Sqlite),
                l if l.starts_with("-- Postgres") => backend = Some(Backend::Postgres),
                l if l.starts_with("--") => {}
                l => {
                    stmt.push_str(line);
                    stmt.push('\n');
                    if l.ends_with(';') {
                        out.push((backend, std::mem::take(&mut stmt)));
                    }
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn every_documented_query_runs_on_its_backend() {
    let queries = doc_queries();
    assert!(queries.len() >= 15, "{}", queries.len());
    let messages = inbox::read_jsonl(&common::samples().join("replay-small.jsonl")).unwrap();
    let (sqlite, _, _dir) = common::sqlite().await;
    let (pg, _guard) = common::postgres("history_docs").await;
    for db in [&sqlite, &pg] {
        replay::replay(db, &Policy::default(), &messages, 100)
            .await
            .unwrap();
        let mut ran = 0;
        for (backend, sql) in &queries {
            if backend.is_some_and(|b| b != db.backend()) {
                continue;
            }
            let rows = conductor::with_pool!(db, |p| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_all(p)
                .await
                .map(|r| r.len()))
            .unwrap_or_else(|e| panic!("{:?}: {sql}\n{e}", db.backend()));
            if sql.contains("transport_id = 'b35331ce") || sql.contains("ticket_key = 'PAY-42'") {
                assert!(rows > 0, "{sql}");
            }
            ran += 1;
        }
        assert!(ran >= 13, "{ran}");
    }
}

#[tokio::test]
async fn history_cli_prints_message_ticket_incident_and_job() {
    let (db, url, _dir) = common::sqlite().await;
    let messages = inbox::read_jsonl(&common::samples().join("replay-small.jsonl")).unwrap();
    replay::replay(&db, &Policy::default(), &messages, 100)
        .await
        .unwrap();
    db.close().await;
    let env = [("CONDUCTOR_DATABASE_URL", url.as_str())];
    let (ok, out, err) = common::conductor(
        &["history", "message", "b35331ce-af2e-d9dd-87e3-55b26210b784"],
        &env,
    );
    assert!(ok.success(), "{err}");
    assert!(
        out.contains("deliveries") && out.contains("  2\n") && out.contains("spawn"),
        "{out}"
    );
    let (_, out, _) = common::conductor(&["history", "ticket", "PAY-42"], &env);
    assert!(
        out.contains("== sightings (2 rows)") && out.contains("duplicate"),
        "{out}"
    );
    let (_, out, _) = common::conductor(&["history", "incident", "1"], &env);
    assert!(
        out.contains("== alarms (6 rows)") && out.contains("alarm_count"),
        "{out}"
    );
    let (_, out, _) = common::conductor(&["history", "job", "4"], &env);
    assert!(out.contains("PAY-42") && out.contains("pending"), "{out}");
    let (_, out, _) = common::conductor(&["history", "recent", "3"], &env);
    assert!(out.contains("(3 rows)"), "{out}");
}
