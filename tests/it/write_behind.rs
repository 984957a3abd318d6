//! Property: the write-behind replay store leaves exactly the rows the statement store (the
//! live path's queries) leaves, for any stream and any batch size, including when it continues
//! a database the statement store filled. Both run the same decide code into real SQLite files.

use crate::common;

use conductor::{
    db::Db,
    scenario::{
        gen,
        replay::{self, StoreMode},
    },
    scheduling::domain::RawMessage,
    scheduling::policy::Policy,
    with_pool,
};
use proptest::prelude::*;

/// One input: an alarm (account, minute, state, event id), a ticket (key), a malformed body,
/// or a redelivery of an earlier message id.
#[derive(Debug, Clone)]
enum Ev {
    Alarm(u8, u16, bool, u16),
    Ticket(u8),
    Malformed,
    Redeliver(u8),
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => (0u8..4, 0u16..600, prop::bool::weighted(0.85), 0u16..200)
            .prop_map(|(a, m, alarm, e)| Ev::Alarm(a, m, alarm, e)),
        2 => (0u8..12).prop_map(Ev::Ticket),
        1 => Just(Ev::Malformed),
        1 => any::<u8>().prop_map(Ev::Redeliver),
    ]
}

fn messages(evs: &[Ev]) -> Vec<RawMessage> {
    let mut out: Vec<RawMessage> = Vec::new();
    for (i, e) in evs.iter().enumerate() {
        let m = match e {
            Ev::Alarm(acct, minute, alarm, event) => RawMessage {
                transport_id: format!("m{i}"),
                // Event ids repeat across messages now and then: an alarm duplicate.
                body: gen::eventbridge_alarm(
                    &format!("e{event}"),
                    &format!("{:012}", acct),
                    "cpu",
                    if *alarm { "ALARM" } else { "OK" },
                    gen::BASE_MS + *minute as i64 * 60_000,
                ),
                raw: None,
            },
            Ev::Ticket(k) => RawMessage {
                transport_id: format!("m{i}"),
                body: gen::ticket(&format!("OPS-{k}"), "fix it", None),
                raw: None,
            },
            Ev::Malformed => RawMessage {
                transport_id: format!("m{i}"),
                body: "{\"not\": \"a message\"}".into(),
                raw: None,
            },
            Ev::Redeliver(j) if !out.is_empty() => out[*j as usize % out.len()].clone(),
            Ev::Redeliver(_) => continue,
        };
        out.push(m);
    }
    out
}

/// Every row of the scheduling tables, as JSON text, in a stable order.
async fn dump(db: &Db) -> Vec<String> {
    const TABLES: &[&str] = &[
        "SELECT json_array(id, transport_id, source, body, received_ms, deliveries, last_delivered_ms) FROM messages ORDER BY id",
        "SELECT json_array(message_id, reason, rejected_ms) FROM rejected ORDER BY message_id",
        "SELECT json_array(key, jira_id, project, summary, first_message_id, first_seen_ms) FROM tickets ORDER BY key",
        "SELECT json_array(id, account, first_event_ms, last_event_ms, alarm_count, opened_by_message_id, opened_ms, merged_into, merged_by_message_id, merged_ms) FROM incidents ORDER BY id",
        "SELECT json_array(id, event_id, message_id, account, alarm_name, state, event_ms, incident_id, original_incident_id) FROM alarms ORDER BY id",
        "SELECT json_array(id, kind, ticket_key, incident_id, message_id, state, attempts, created_ms, updated_ms) FROM agent_jobs ORDER BY id",
        "SELECT json_array(message_id, decision, kind, ticket_key, account, incident_id, job_id, duplicate_of, merged_incident_ids, reason, policy, decided_ms) FROM decisions ORDER BY message_id",
    ];
    let mut rows = Vec::new();
    for sql in TABLES {
        let got: Vec<String> =
            with_pool!(db, |p| sqlx::query_scalar(*sql).fetch_all(p).await.unwrap());
        rows.push(format!("-- {sql}"));
        rows.extend(got);
    }
    rows
}

/// Replays `msgs` as `plan` says ((store, count, batch) segments, in order) and dumps the rows.
fn run(msgs: &[RawMessage], plan: &[(StoreMode, usize, usize)]) -> (Vec<String>, replay::Summary) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (db, _, _dir) = common::sqlite().await;
        let policy = conductor::scheduling::flags::Scheduling::only(Policy::default());
        let mut lines = Vec::new();
        let mut rest = msgs;
        for &(mode, count, batch) in plan {
            let (now, later) = rest.split_at(count.min(rest.len()));
            lines.extend(
                replay::decide_all(&db, &policy, now, batch, mode)
                    .await
                    .unwrap(),
            );
            rest = later;
        }
        let incidents = replay::final_incidents(&db).await.unwrap();
        let summary = replay::summarise(msgs, &lines, incidents.len() as u64);
        let rows = dump(&db).await;
        db.close().await;
        (rows, summary)
    })
}

/// The first row where two dumps differ, for a readable failure.
fn first_difference(got: &[String], want: &[String]) -> Option<String> {
    let n = got.len().max(want.len());
    (0..n).find_map(|i| {
        let (g, w) = (got.get(i), want.get(i));
        (g != w).then(|| format!("row {i}:\n  write-behind: {g:?}\n  statements:   {w:?}"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn write_behind_leaves_the_rows_the_statements_leave(
        evs in prop::collection::vec(ev(), 1..160),
        batch in 1usize..50,
        split in 0usize..160,
    ) {
        let msgs = messages(&evs);
        let all = msgs.len();
        let (expected, _) = run(&msgs, &[(StoreMode::Statements, all, 1)]);
        let (batched, _) = run(&msgs, &[(StoreMode::WriteBehind, all, batch)]);
        prop_assert_eq!(first_difference(&batched, &expected), None);
        // The write-behind store continuing a database the statement store began: it must load
        // stored tickets, alarm events, open incidents and transport ids correctly. (Each
        // replay starts its virtual clock afresh, so the reference is split the same way.)
        let (expected, _) = run(
            &msgs,
            &[(StoreMode::Statements, split, 7), (StoreMode::Statements, all, 1)],
        );
        let (continued, _) = run(
            &msgs,
            &[(StoreMode::Statements, split, 7), (StoreMode::WriteBehind, all, batch)],
        );
        prop_assert_eq!(first_difference(&continued, &expected), None);
    }
}

/// A fixed stream that surely holds merges, alarm duplicates, ticket duplicates, rejects and
/// redeliveries, so the property above is known to cover them.
#[test]
fn the_fixed_stream_covers_every_decision() {
    let mut evs = Vec::new();
    let mut event = 0u16;
    let mut alarm = |evs: &mut Vec<Ev>, account: u8, minute: u16, state: bool| {
        event += 1;
        evs.push(Ev::Alarm(account, minute, state, event));
    };
    for account in 0..3u8 {
        // Separate incidents 100 minutes apart, then alarms between them that bridge two.
        for minute in (0..600).step_by(100) {
            alarm(&mut evs, account, minute, true);
        }
        evs.push(Ev::Ticket(account));
        for minute in (50..600).step_by(200) {
            alarm(&mut evs, account, minute, true);
            alarm(&mut evs, account, minute + 5, false);
        }
        evs.push(Ev::Malformed);
        evs.push(Ev::Redeliver(account * 3));
        evs.push(Ev::Ticket(account));
    }
    // The same event ids again: alarm duplicates.
    evs.push(Ev::Alarm(0, 10, true, 3));
    evs.push(Ev::Alarm(1, 20, true, 4));
    let msgs = messages(&evs);
    let (expected, s) = run(&msgs, &[(StoreMode::Statements, msgs.len(), 1)]);
    assert!(s.merged > 0, "{s:?}");
    assert!(s.alarm_duplicates > 0, "{s:?}");
    assert!(s.ticket_duplicates > 0, "{s:?}");
    assert!(
        s.rejected > 0 && s.redelivered > 0 && s.ignored > 0,
        "{s:?}"
    );
    for batch in [1, 4, 13, 1000] {
        let (got, _) = run(&msgs, &[(StoreMode::WriteBehind, msgs.len(), batch)]);
        assert_eq!(first_difference(&got, &expected), None, "batch {batch}");
    }
    let (expected, _) = run(
        &msgs,
        &[
            (StoreMode::Statements, 17, 10),
            (StoreMode::Statements, msgs.len(), 1),
        ],
    );
    let (got, _) = run(
        &msgs,
        &[
            (StoreMode::Statements, 17, 10),
            (StoreMode::WriteBehind, msgs.len(), 5),
        ],
    );
    assert_eq!(first_difference(&got, &expected), None);
}
