//! Property: the final partition of alarms into incidents does not depend on arrival order,
//! and with in-order arrival the spawns equal the incidents. Decided by the real decide code
//! into real SQLite files.

use crate::common;

use std::collections::BTreeSet;

use conductor::{
    scenario::{gen, replay},
    scheduling::domain::RawMessage,
    scheduling::policy::Policy,
};
use proptest::prelude::*;

/// Alarms as (account index, minutes after the base time).
fn messages(alarms: &[(u8, u32)]) -> Vec<RawMessage> {
    alarms
        .iter()
        .enumerate()
        .map(|(i, (acct, minute))| RawMessage {
            transport_id: format!("m{i}"),
            body: gen::eventbridge_alarm(
                &format!("e{i}"),
                &format!("{:012}", acct),
                "a",
                "ALARM",
                gen::BASE_MS + *minute as i64 * 60_000,
            ),
            raw: None,
        })
        .collect()
}

type Partition = BTreeSet<BTreeSet<String>>;

fn decide(msgs: &[RawMessage]) -> (Partition, replay::Summary) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (db, _, _dir) = common::sqlite().await;
        let report = replay::replay(&db, &Policy::default(), msgs, 64)
            .await
            .unwrap();
        db.close().await;
        let partition = report
            .incidents
            .iter()
            .map(|i| i.transport_ids.iter().cloned().collect())
            .collect();
        (partition, report.summary)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn partition_is_independent_of_arrival_order(
        alarms in prop::collection::vec((0u8..3, 0u32..600), 1..40),
        seed in any::<u64>(),
    ) {
        let msgs = messages(&alarms);
        let mut sorted = msgs.clone();
        sorted.sort_by_key(|m| conductor::scheduling::domain::parse_message(&m.body).map(|m| match m {
            conductor::scheduling::domain::Message::Alarm(a) => a.event_ms,
            _ => 0,
        }).unwrap());
        let mut shuffled = msgs.clone();
        use rand::{seq::SliceRandom, SeedableRng};
        shuffled.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));

        let (in_order, in_order_summary) = decide(&sorted);
        let (as_given, _) = decide(&msgs);
        let (reshuffled, _) = decide(&shuffled);
        prop_assert_eq!(&in_order, &as_given);
        prop_assert_eq!(&in_order, &reshuffled);
        // In time order nothing ever needs merging: every incident is one spawn.
        prop_assert_eq!(in_order_summary.incident_spawns, in_order.len() as u64);
        prop_assert_eq!(in_order_summary.merged, 0);
        // Every alarm lands in exactly one incident.
        prop_assert_eq!(in_order.iter().map(|s| s.len()).sum::<usize>(), msgs.len());
    }
}
