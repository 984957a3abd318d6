//! The store's conformance suite: one set of behaviours every backend must show, written once
//! and run on each (River's `riverdrivertest` is the model). The decision code is written
//! against [`Store`]; these tests pin down what it may rely on, so a backend whose queries,
//! columns or types drift from the other's fails here by the operation that drifted, not
//! somewhere downstream in a replay.
//!
//! Every test takes a fresh database of its backend; `conformance!` below instantiates each
//! for SQLite and for Postgres, and each test of the scheduling state (tickets, alarms,
//! incidents) for both scopes of the one store: the real tables and a candidate policy's
//! shadow tables, which the same named queries serve. Adding a backend means adding one line
//! there.

use crate::common;
use conductor::{
    db::{Db, Tx},
    error::Error,
    jobs::{self, JobState},
    scheduling::domain::{
        Alarm, AlarmState, Decision, DecisionKind, Ingested, SubjectKind, Ticket, TicketSource,
    },
    scheduling::store::{
        sql::{Scope, Tables},
        State, Store,
    },
};

/// A fresh, migrated database of backend `kind`, and what keeps it alive (its directory, or
/// the guard that drops it).
async fn open(kind: &str) -> (Db, Box<dyn std::any::Any>) {
    match kind {
        "sqlite" => {
            let (db, _url, dir) = common::sqlite().await;
            (db, Box::new(dir))
        }
        _ => {
            let (db, guard) = common::postgres("conformance").await;
            (db, Box::new(guard))
        }
    }
}

/// `store: [tests taking a Db]` run per backend; `state: [tests taking a Db and a Scope]`
/// per backend and scope.
macro_rules! conformance {
    (store: [$($store:ident),* $(,)?], state: [$($state:ident),* $(,)?]) => {
        conformance!(@backend sqlite, [$($store),*], [$($state),*]);
        conformance!(@backend postgres, [$($store),*], [$($state),*]);
    };
    (@backend $backend:ident, [$($store:ident),*], [$($state:ident),*]) => {
        mod $backend {
            $(#[tokio::test]
            async fn $store() {
                let (db, _keep) = super::open(stringify!($backend)).await;
                super::$store(db).await;
            })*
            mod real {
                $(#[tokio::test]
                async fn $state() {
                    let (db, _keep) = super::super::open(stringify!($backend)).await;
                    super::super::$state(db, super::super::Scope::Real).await;
                })*
            }
            mod candidate {
                $(#[tokio::test]
                async fn $state() {
                    let (db, _keep) = super::super::open(stringify!($backend)).await;
                    super::super::$state(db, super::super::Scope::Candidate("cand")).await;
                })*
            }
        }
    };
}

conformance!(
    store: [
        a_message_is_stored_once_and_redelivered_after,
        a_transport_id_with_another_body_is_taken,
        a_body_that_is_not_utf8_keeps_its_bytes,
        a_decision_reads_back_as_it_was_written,
        a_job_starts_pending_for_its_subject,
        a_rejection_is_stored_with_its_reason,
    ],
    state: [
        a_ticket_is_new_once_and_points_at_its_job,
        an_alarm_event_is_stored_once_and_finds_its_incident,
        open_incidents_are_found_by_overlap_and_grouping,
        an_incident_widens_and_counts_its_alarms,
        a_merge_moves_the_alarms_and_closes_the_other_incident,
    ]
);

/// The store of `scope` on `tx`, for one call (it is only a view of the transaction).
fn st<'a>(tx: &'a mut Tx, scope: Scope<'a>) -> Tables<'a> {
    Tables::new(tx, scope)
}

/// A table of `scope`: the real one, or the candidate's shadow table.
fn table(scope: Scope<'_>, name: &str) -> String {
    match scope {
        Scope::Real => name.to_owned(),
        Scope::Candidate(_) => format!("shadow_{name}"),
    }
}

fn ticket(key: &str) -> Ticket {
    Ticket {
        key: key.into(),
        jira_id: Some("10001".into()),
        project: Some("OPS".into()),
        summary: Some("disk full".into()),
        description: "the disk is full".into(),
        labels: vec!["ops".into()],
        priority: Some("High".into()),
        source: TicketSource::Bare,
        event_ms: None,
    }
}

fn alarm(event_id: &str, account: &str, name: &str, at_ms: i64) -> Alarm {
    Alarm {
        event_id: event_id.into(),
        account: account.into(),
        alarm_name: name.into(),
        state: AlarmState::Alarm,
        event_ms: at_ms,
    }
}

/// A stored message to hang rows on (every row names the message that made it).
async fn message(tx: &mut Tx, transport_id: &str) -> i64 {
    Tables::real(tx)
        .insert_message(transport_id, "test", "{}", None, None, 1_000)
        .await
        .unwrap()
        .message_id()
}

async fn scalar_i64(tx: &mut Tx, sql: &str, id: i64) -> i64 {
    conductor::with_conn!(tx, |c| sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(
        sql
    ))
    .bind(id)
    .fetch_one(c)
    .await
    .unwrap())
}

async fn a_message_is_stored_once_and_redelivered_after(db: Db) {
    let mut tx = db.begin().await.unwrap();
    let first = Tables::real(&mut tx)
        .insert_message("sqs-1", "sqs", "{\"a\":1}", None, None, 1_000)
        .await
        .unwrap();
    let Ingested::New { message_id } = first else {
        panic!("first sighting is new: {first:?}");
    };
    let again = Tables::real(&mut tx)
        .insert_message("sqs-1", "sqs", "{\"a\":1}", None, None, 2_000)
        .await
        .unwrap();
    assert_eq!(again, Ingested::Redelivered { message_id });
    let deliveries = scalar_i64(
        &mut tx,
        "SELECT CAST(deliveries AS BIGINT) FROM messages WHERE id = $1",
        message_id,
    )
    .await;
    assert_eq!(deliveries, 2, "a redelivery counts as one more delivery");
    tx.commit().await.unwrap();
}

async fn a_transport_id_with_another_body_is_taken(db: Db) {
    let mut tx = db.begin().await.unwrap();
    let first = message(&mut tx, "sqs-2").await;
    let taken = Tables::real(&mut tx)
        .insert_message("sqs-2", "sqs", "{\"other\":true}", None, None, 2_000)
        .await
        .unwrap();
    assert_eq!(taken, Ingested::IdTaken { original_id: first });
    let reused = Tables::real(&mut tx)
        .insert_message(
            "sqs-2#2",
            "sqs",
            "{\"other\":true}",
            None,
            Some(first),
            2_000,
        )
        .await
        .unwrap();
    assert!(
        matches!(reused, Ingested::New { .. } | Ingested::Reused { .. }),
        "a derived id stores the second body: {reused:?}"
    );
    assert_ne!(reused.message_id(), first);
}

async fn a_body_that_is_not_utf8_keeps_its_bytes(db: Db) {
    let mut tx = db.begin().await.unwrap();
    let bytes = b"{\"a\":\"\xff\"}".to_vec();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let id = Tables::real(&mut tx)
        .insert_message("raw-1", "file", &text, Some(&bytes), None, 1_000)
        .await
        .unwrap()
        .message_id();
    let stored: Option<Vec<u8>> = conductor::with_conn!(&mut tx, |c| sqlx::query_scalar(
        "SELECT raw FROM messages WHERE id = $1"
    )
    .bind(id)
    .fetch_one(c)
    .await
    .unwrap());
    assert_eq!(
        stored.as_deref(),
        Some(&bytes[..]),
        "the bytes as delivered"
    );
}

async fn a_decision_reads_back_as_it_was_written(db: Db) {
    let mut tx = db.begin().await.unwrap();
    let id = message(&mut tx, "m-1").await;
    let other = message(&mut tx, "m-0").await;
    assert_eq!(
        Tables::real(&mut tx).lock_decided(id).await.unwrap(),
        None,
        "not decided yet"
    );
    let incident = Tables::real(&mut tx)
        .open_incident("111122223333", None, 10_000, id, 0)
        .await
        .unwrap();
    let job = Tables::real(&mut tx)
        .insert_job(SubjectKind::Alarm, None, Some(incident), id, 0)
        .await
        .unwrap();
    let mut d = Decision::new(DecisionKind::Merged, Some(SubjectKind::Alarm));
    d.account = Some("111122223333".into());
    d.incident = Some(incident);
    d.job = job;
    d.duplicate_of = Some(other);
    d.merged = vec![3, 5];
    d.reason = Some("bridged two incidents".into());
    Tables::real(&mut tx)
        .insert_decision(id, &d, "default", 5_000)
        .await
        .unwrap();
    assert_eq!(
        Tables::real(&mut tx).lock_decided(id).await.unwrap(),
        Some(d.clone())
    );
    tx.commit().await.unwrap();
    // And from a new transaction: nothing was only in memory.
    let mut tx = db.begin().await.unwrap();
    assert_eq!(
        Tables::real(&mut tx).lock_decided(id).await.unwrap(),
        Some(d)
    );
}

async fn a_ticket_is_new_once_and_points_at_its_job(db: Db, scope: Scope<'_>) {
    let mut tx = db.begin().await.unwrap();
    let first = message(&mut tx, "t-1").await;
    let second = message(&mut tx, "t-2").await;
    let mut s = st(&mut tx, scope);
    assert!(s
        .insert_ticket(&ticket("OPS-1"), first, 1_000)
        .await
        .unwrap());
    assert!(!s
        .insert_ticket(&ticket("OPS-1"), second, 2_000)
        .await
        .unwrap());
    assert_eq!(s.ticket_origin("OPS-1").await.unwrap(), (first, None));
    let job = s
        .insert_job(SubjectKind::Ticket, Some("OPS-1"), None, first, 1_000)
        .await
        .unwrap();
    assert_eq!(
        job.is_some(),
        scope == Scope::Real,
        "the real tables create the job; a candidate's spawn is a decision only"
    );
    assert_eq!(s.ticket_origin("OPS-1").await.unwrap(), (first, job));
}

async fn an_alarm_event_is_stored_once_and_finds_its_incident(db: Db, scope: Scope<'_>) {
    let mut tx = db.begin().await.unwrap();
    let m = message(&mut tx, "a-1").await;
    let mut s = st(&mut tx, scope);
    let a = alarm("ev-1", "111122223333", "cpu", 10_000);
    let row = s.insert_alarm(&a, m).await.unwrap().expect("a new event");
    assert_eq!(
        s.insert_alarm(&a, m).await.unwrap(),
        None,
        "the same event id"
    );
    assert_eq!(s.alarm_origin("ev-1").await.unwrap(), (m, None));
    s.lock_account("111122223333").await.unwrap();
    let incident = s
        .open_incident("111122223333", None, 10_000, m, 11_000)
        .await
        .unwrap();
    s.set_alarm_incident(row, incident).await.unwrap();
    assert_eq!(s.alarm_origin("ev-1").await.unwrap(), (m, Some(incident)));
}

async fn open_incidents_are_found_by_overlap_and_grouping(db: Db, scope: Scope<'_>) {
    let mut tx = db.begin().await.unwrap();
    let m = message(&mut tx, "o-1").await;
    let mut s = st(&mut tx, scope);
    let wide = s
        .open_incident("111122223333", None, 10_000, m, 0)
        .await
        .unwrap();
    let keyed = s
        .open_incident("111122223333", Some("cpu"), 50_000, m, 0)
        .await
        .unwrap();
    s.open_incident("999988887777", None, 10_000, m, 0)
        .await
        .unwrap();
    let near = s
        .open_incidents_near("111122223333", 0, 20_000)
        .await
        .unwrap();
    assert_eq!(near.iter().map(|i| i.id).collect::<Vec<_>>(), vec![wide]);
    assert_eq!(
        (
            near[0].first_ms,
            near[0].last_ms,
            near[0].alarm_name.clone()
        ),
        (10_000, 10_000, None)
    );
    assert_eq!(
        near[0].has_job,
        scope != Scope::Real,
        "a real incident has no job yet; a candidate decides as if its incidents had agents"
    );
    let all = s
        .open_incidents_near("111122223333", 0, 60_000)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![wide, keyed]
    );
    assert_eq!(all[1].alarm_name.as_deref(), Some("cpu"));
    s.insert_job(SubjectKind::Alarm, None, Some(wide), m, 0)
        .await
        .unwrap();
    let near = s
        .open_incidents_near("111122223333", 0, 20_000)
        .await
        .unwrap();
    assert!(near[0].has_job, "its job exists now");
}

async fn an_incident_widens_and_counts_its_alarms(db: Db, scope: Scope<'_>) {
    let mut tx = db.begin().await.unwrap();
    let m = message(&mut tx, "w-1").await;
    let mut s = st(&mut tx, scope);
    let id = s
        .open_incident("111122223333", None, 10_000, m, 0)
        .await
        .unwrap();
    s.extend_incident(id, 5_000, 8_000, 1).await.unwrap();
    s.extend_incident(id, 9_000, 30_000, 2).await.unwrap();
    let span = s
        .open_incidents_near("111122223333", 0, 100_000)
        .await
        .unwrap();
    assert_eq!((span[0].first_ms, span[0].last_ms), (5_000, 30_000));
    let sql = format!(
        "SELECT CAST(alarm_count AS BIGINT) FROM {} WHERE id = $1",
        table(scope, "incidents")
    );
    assert_eq!(
        scalar_i64(&mut tx, &sql, id).await,
        4,
        "the opener and three more"
    );
}

async fn a_merge_moves_the_alarms_and_closes_the_other_incident(db: Db, scope: Scope<'_>) {
    let mut tx = db.begin().await.unwrap();
    let m = message(&mut tx, "g-1").await;
    let mut s = st(&mut tx, scope);
    let into = s
        .open_incident("111122223333", None, 10_000, m, 0)
        .await
        .unwrap();
    let other = s
        .open_incident("111122223333", None, 90_000, m, 0)
        .await
        .unwrap();
    let a = s
        .insert_alarm(&alarm("ev-g", "111122223333", "cpu", 90_000), m)
        .await
        .unwrap()
        .unwrap();
    s.set_alarm_incident(a, other).await.unwrap();
    s.merge_incident(into, other, m, 100_000).await.unwrap();
    let open = s
        .open_incidents_near("111122223333", 0, 1_000_000)
        .await
        .unwrap();
    assert_eq!(open.iter().map(|i| i.id).collect::<Vec<_>>(), vec![into]);
    assert_eq!((open[0].first_ms, open[0].last_ms), (10_000, 90_000));
    assert_eq!(s.alarm_origin("ev-g").await.unwrap(), (m, Some(into)));
    let again = s.merge_incident(into, other, m, 100_000).await;
    assert!(
        matches!(again, Err(Error::Corrupt(_))),
        "an incident is merged once: {again:?}"
    );
    let sql = format!(
        "SELECT merged_into FROM {} WHERE id = $1",
        table(scope, "incidents")
    );
    assert_eq!(scalar_i64(&mut tx, &sql, other).await, into);
}

async fn a_job_starts_pending_for_its_subject(db: Db) {
    let mut tx = db.begin().await.unwrap();
    let m = message(&mut tx, "j-1").await;
    let incident = Tables::real(&mut tx)
        .open_incident("111122223333", None, 10_000, m, 0)
        .await
        .unwrap();
    let id = Tables::real(&mut tx)
        .insert_job(SubjectKind::Alarm, None, Some(incident), m, 4_000)
        .await
        .unwrap()
        .unwrap();
    let job = jobs::load_job(&mut tx, id).await.unwrap();
    assert_eq!(
        (
            job.kind.as_str(),
            job.ticket_key,
            job.incident_id,
            job.message_id
        ),
        ("incident", None, Some(incident), m)
    );
    assert_eq!(
        (job.state, job.attempts, job.created_ms),
        (JobState::Pending, 0, 4_000)
    );
}

async fn a_rejection_is_stored_with_its_reason(db: Db) {
    let mut tx = db.begin().await.unwrap();
    let m = message(&mut tx, "r-1").await;
    Tables::real(&mut tx)
        .insert_rejected(m, "not JSON: expected value", 3_000)
        .await
        .unwrap();
    let reason: String = conductor::with_conn!(&mut tx, |c| sqlx::query_scalar(
        "SELECT reason FROM rejected WHERE message_id = $1"
    )
    .bind(m)
    .fetch_one(c)
    .await
    .unwrap());
    assert_eq!(reason, "not JSON: expected value");
}
