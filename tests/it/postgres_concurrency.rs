//! Several deciders on one Postgres, fed the same messages each delivered twice, spawn exactly
//! what one sequential replay spawns: the decisions are race-free in the database.

use crate::common;

use std::{collections::BTreeSet, sync::Arc};

use conductor::{
    db::Db,
    scenario::{gen, replay},
    scheduling::decide,
    scheduling::domain::RawMessage,
    scheduling::policy::Policy,
};
use rand::{seq::SliceRandom, SeedableRng};

/// 1,000 messages whose outcome cannot depend on processing order: tickets with duplicates,
/// and alarm bursts of one account within an hour, bursts far apart.
fn stream() -> Vec<RawMessage> {
    let mut msgs = gen::generate(&gen::GenSpec::TicketFlood {
        rate: 10,
        duration: "50s".into(),
        duplicates: 0.4,
        seed: 3,
    })
    .unwrap();
    msgs.extend(
        gen::generate(&gen::GenSpec::AlarmBursts {
            accounts: 10,
            bursts: 5,
            per_burst: 10,
            span: "1h".into(),
            gap: "3h".into(),
            seed: 5,
        })
        .unwrap(),
    );
    assert_eq!(msgs.len(), 1000);
    msgs
}

/// One delivery: ingest and decide in one transaction, retried on transient conflicts.
async fn deliver(db: &Db, policy: &Policy, m: &RawMessage) {
    for attempt in 0.. {
        let result = async {
            let mut tx = db.begin().await?;
            decide::deliver(
                &mut conductor::scheduling::store::sql::Tables::real(&mut tx),
                &conductor::scheduling::flags::Scheduling::only(policy.clone()),
                &m.transport_id,
                "test",
                &m.body,
                0,
            )
            .await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) if e.is_retryable() && attempt < 20 => continue,
            Err(e) => panic!("delivery of {} failed: {e}", m.transport_id),
        }
    }
}

async fn outcome(db: &Db) -> (i64, i64, i64, BTreeSet<BTreeSet<String>>) {
    let incidents = replay::final_incidents(db).await.unwrap();
    (
        common::count(
            db,
            "SELECT COUNT(*) FROM decisions WHERE decision = 'spawn'",
        )
        .await,
        common::count(db, "SELECT COUNT(*) FROM agent_jobs").await,
        common::count(db, "SELECT COUNT(*) FROM decisions").await,
        incidents
            .into_iter()
            .map(|i| i.transport_ids.into_iter().collect())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_concurrent_deciders_spawn_what_a_sequential_replay_spawns() {
    let messages = stream();
    let policy = Arc::new(Policy::default());

    let (sequential_db, _, _dir) = common::sqlite().await;
    let seq = replay::replay(&sequential_db, &policy, &messages, 100)
        .await
        .unwrap();
    let expected = outcome(&sequential_db).await;
    assert_eq!(
        expected.0,
        (seq.summary.ticket_spawns + seq.summary.incident_spawns) as i64
    );
    assert_eq!(expected.0, expected.1);
    assert_eq!(seq.summary.incident_spawns, 50);

    let (db, _guard) = common::postgres("concurrency").await;
    // Every message twice, in a shuffled order, shared by four deciders pulling from one queue:
    // both deliveries of a message are often decided at the same moment.
    let mut deliveries: Vec<RawMessage> = messages.iter().chain(messages.iter()).cloned().collect();
    deliveries.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(17));
    let deliveries = Arc::new(deliveries);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..4 {
        let (db, policy, deliveries, next) =
            (db.clone(), policy.clone(), deliveries.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(m) = deliveries.get(i) else { break };
                deliver(&db, &policy, m).await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let got = outcome(&db).await;
    assert_eq!(got.0, expected.0, "spawns");
    assert_eq!(got.1, expected.1, "jobs");
    assert_eq!(got.2, 1000, "one decision per message");
    assert_eq!(got.3, expected.3, "incident partition");
    assert_eq!(
        common::count(&db, "SELECT SUM(deliveries) FROM messages").await,
        2000
    );
    db.close().await;
}

/// Jobs taking and releasing slots on one repository as fast as they can, from several
/// connections: under READ COMMITTED two takers could both count one free slot; admission's
/// lock must keep the holders at `caps.per_repo` (2 here) at every moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_taken_and_released_concurrently_never_exceed_the_cap() {
    let (db, _guard) = common::postgres("claims").await;
    let policy = Policy::default();
    let jobs: Vec<i64> = (0..6).map(|i| i + 1).collect();
    for i in &jobs {
        let body = gen::ticket(&format!("CLM-{i}"), "claim", None);
        deliver(
            &db,
            &policy,
            &RawMessage {
                transport_id: format!("m{i}"),
                body,
                raw: None,
            },
        )
        .await;
    }
    assert_eq!(
        common::count(&db, "SELECT COUNT(*) FROM agent_jobs").await,
        6
    );
    let holders = Arc::new(std::sync::Mutex::new(0usize));
    let mut handles = Vec::new();
    for job in jobs {
        let (db, holders) = (db.clone(), holders.clone());
        handles.push(tokio::spawn(async move {
            let mut held = 0;
            let caps = conductor::config::Caps {
                per_repo: 2,
                ..Default::default()
            };
            let me = conductor::jobs::caps::Candidate {
                job_id: job,
                repo: "/repos/one.git",
                account: None,
                budget_waived: false,
            };
            for _ in 0..150 {
                let mut tx = db.begin().await.unwrap();
                let admission = conductor::jobs::caps::admit(&mut tx, &caps, &me, 0)
                    .await
                    .expect("admission answers");
                tx.commit().await.unwrap();
                if admission == conductor::jobs::caps::Admission::Admitted {
                    held += 1;
                    {
                        let mut h = holders.lock().unwrap();
                        *h += 1;
                        assert!(
                            *h <= 2,
                            "{} jobs hold slots of a repository capped at 2",
                            *h
                        );
                    }
                    tokio::task::yield_now().await;
                    *holders.lock().unwrap() -= 1;
                    let mut tx = db.begin().await.unwrap();
                    conductor::jobs::release_repo(&mut tx, job).await.unwrap();
                    tx.commit().await.unwrap();
                }
            }
            held
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    assert!(total > 0, "nobody ever held a slot");
}
