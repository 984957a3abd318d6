//! Synthetic, reproducible replay streams (`conductor scenario gen`): the same spec and seed
//! always give the same messages.

use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::scheduling::domain::{format_ms, RawMessage};

/// 2026-05-12T00:00:00Z: the generated streams' epoch.
pub const BASE_MS: i64 = 1_778_544_000_000;

/// What to generate. Durations are humantime strings (`1h`, `90s`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GenSpec {
    /// `alarms` ALARM events spread over `accounts` accounts (round robin, so each account
    /// gets its share) at random times within `span`, in time order unless `shuffle`.
    AlarmStorm {
        #[arg(long, default_value_t = 100)]
        alarms: usize,
        #[arg(long, default_value_t = 20)]
        accounts: usize,
        #[arg(long, default_value = "1h")]
        span: String,
        #[arg(long)]
        #[serde(default)]
        shuffle: bool,
        #[arg(long, default_value_t = 0)]
        #[serde(default)]
        seed: u64,
    },
    /// `rate` ticket messages a second for `duration`; a fraction `duplicates` of them repeat
    /// an earlier ticket (as an update webhook or the bare issue again).
    TicketFlood {
        #[arg(long, default_value_t = 10)]
        rate: usize,
        #[arg(long, default_value = "60s")]
        duration: String,
        #[arg(long, default_value_t = 0.2)]
        duplicates: f64,
        #[arg(long, default_value_t = 0)]
        #[serde(default)]
        seed: u64,
    },
    /// Per account, `bursts` bursts of `per_burst` ALARMs within one `span` (≤ the window),
    /// bursts `gap` apart (> twice the window): the outcome cannot depend on arrival order.
    AlarmBursts {
        #[arg(long, default_value_t = 10)]
        accounts: usize,
        #[arg(long, default_value_t = 5)]
        bursts: usize,
        #[arg(long, default_value_t = 10)]
        per_burst: usize,
        #[arg(long, default_value = "1h")]
        span: String,
        #[arg(long, default_value = "3h")]
        gap: String,
        #[arg(long, default_value_t = 0)]
        #[serde(default)]
        seed: u64,
    },
    /// Incidents that a late alarm bridges: per account, `pairs` pairs of bursts of
    /// `per_burst` ALARMs, the two bursts of a pair 1h30m apart (two incidents under a 1h
    /// window), and one alarm between them that arrives after both (at the end of the
    /// stream): it merges the pair into one incident. With `tickets` tickets (a third of them
    /// repeated) and `junk` malformed bodies mixed in; in arrival order unless `shuffle`.
    LateAlarms {
        #[arg(long, default_value_t = 10)]
        accounts: usize,
        #[arg(long, default_value_t = 2)]
        pairs: usize,
        #[arg(long, default_value_t = 5)]
        per_burst: usize,
        #[arg(long, default_value_t = 0)]
        #[serde(default)]
        tickets: usize,
        #[arg(long, default_value_t = 0)]
        #[serde(default)]
        junk: usize,
        #[arg(long)]
        #[serde(default)]
        shuffle: bool,
        #[arg(long, default_value_t = 0)]
        #[serde(default)]
        seed: u64,
    },
    /// A realistic mix: tickets with duplicates, alarms across accounts in time order with
    /// OK transitions, malformed bodies and transport redeliveries, `count` messages.
    Mixed {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 20)]
        accounts: usize,
        #[arg(long, default_value_t = 0)]
        #[serde(default)]
        seed: u64,
    },
}

fn dur_ms(s: &str) -> Result<i64, String> {
    humantime::parse_duration(s)
        .map(|d| d.as_millis() as i64)
        .map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// An EventBridge alarm body.
pub fn eventbridge_alarm(
    event_id: &str,
    account: &str,
    alarm: &str,
    state: &str,
    at_ms: i64,
) -> String {
    json!({
        "version": "0", "id": event_id, "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch", "account": account, "time": format_ms(at_ms), "region": "us-west-2",
        "detail": {"alarmName": alarm, "state": {"value": state, "reason": "Threshold Crossed"}}
    })
    .to_string()
}

/// An SNS alarm notification body.
pub fn sns_alarm(message_id: &str, account: &str, alarm: &str, state: &str, at_ms: i64) -> String {
    let at = chrono::DateTime::from_timestamp_millis(at_ms)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000");
    let inner = json!({"AlarmName": alarm, "AWSAccountId": account, "NewStateValue": state, "StateChangeTime": at.to_string()});
    json!({"Type": "Notification", "MessageId": message_id, "Message": inner.to_string()})
        .to_string()
}

/// A Jira ticket body, bare or as a webhook event.
pub fn ticket(key: &str, summary: &str, webhook: Option<&str>) -> String {
    let issue = json!({
        "id": key.rsplit('-').next().unwrap_or("0"), "key": key,
        "fields": {"summary": summary, "description": summary, "project": {"key": key.split('-').next().unwrap_or("X")}, "labels": ["agent"]}
    });
    match webhook {
        Some(event) => json!({"webhookEvent": event, "issue": issue}).to_string(),
        None => issue.to_string(),
    }
}

fn id(rng: &mut ChaCha8Rng) -> String {
    format!("{:016x}-{:08x}", rng.random::<u64>(), rng.random::<u32>())
}

fn account(i: usize) -> String {
    format!("{:012}", 100_000_000_000u64 + i as u64)
}

/// Generates the stream a spec describes.
pub fn generate(spec: &GenSpec) -> Result<Vec<RawMessage>, String> {
    match spec {
        GenSpec::LateAlarms {
            accounts,
            pairs,
            per_burst,
            tickets,
            junk,
            shuffle,
            seed,
        } => Ok(late_alarms(
            *accounts, *pairs, *per_burst, *tickets, *junk, *shuffle, *seed,
        )),
        GenSpec::AlarmStorm {
            alarms,
            accounts,
            span,
            shuffle,
            seed,
        } => alarm_storm(*alarms, *accounts, span, *shuffle, *seed),
        GenSpec::TicketFlood {
            rate,
            duration,
            duplicates,
            seed,
        } => ticket_flood(*rate, duration, *duplicates, *seed),
        GenSpec::AlarmBursts {
            accounts,
            bursts,
            per_burst,
            span,
            gap,
            seed,
        } => alarm_bursts(*accounts, *bursts, *per_burst, span, gap, *seed),
        GenSpec::Mixed {
            count,
            accounts,
            seed,
        } => Ok(mixed(*count, *accounts, *seed)),
    }
}

/// `alarm-storm`: alarms spread over `span` across accounts, in time order or shuffled.
fn alarm_storm(
    alarms: usize,
    accounts: usize,
    span: &str,
    shuffle: bool,
    seed: u64,
) -> Result<Vec<RawMessage>, String> {
    let mut out = Vec::new();
    if accounts == 0 {
        return Err("alarm-storm needs at least one account".into());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let span = dur_ms(span)?;
    let mut events: Vec<(i64, usize)> = (0..alarms)
        .map(|i| (BASE_MS + rng.random_range(0..=span), i % accounts))
        .collect();
    if shuffle {
        events.shuffle(&mut rng);
    } else {
        events.sort();
    }
    for (at, acct) in events {
        let eid = id(&mut rng);
        let body = if rng.random_bool(0.5) {
            eventbridge_alarm(&eid, &account(acct), "cpu-high", "ALARM", at)
        } else {
            sns_alarm(&eid, &account(acct), "cpu-high", "ALARM", at)
        };
        out.push(RawMessage {
            transport_id: id(&mut rng),
            body,
            raw: None,
        });
    }
    Ok(out)
}

/// `ticket-flood`: `rate` tickets a second for `duration`, a share of them updates of
/// earlier ones.
fn ticket_flood(
    rate: usize,
    duration: &str,
    duplicates: f64,
    seed: u64,
) -> Result<Vec<RawMessage>, String> {
    let mut out = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let total = (rate as i64 * dur_ms(duration)? / 1000) as usize;
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..total {
        let body = if !seen.is_empty() && rng.random_bool(duplicates.clamp(0.0, 1.0)) {
            let key = seen[rng.random_range(0..seen.len())].clone();
            let event = if rng.random_bool(0.5) {
                Some("jira:issue_updated")
            } else {
                None
            };
            ticket(&key, "again", event)
        } else {
            let key = format!("FLOOD-{}", seen.len() + 1);
            seen.push(key.clone());
            ticket(&key, "flood ticket", Some("jira:issue_created"))
        };
        out.push(RawMessage {
            transport_id: id(&mut rng),
            body,
            raw: None,
        });
    }
    Ok(out)
}

/// `alarm-bursts`: every account alarms in bursts of `span`, `gap` apart.
fn alarm_bursts(
    accounts: usize,
    bursts: usize,
    per_burst: usize,
    span: &str,
    gap: &str,
    seed: u64,
) -> Result<Vec<RawMessage>, String> {
    let mut out = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (span, gap) = (dur_ms(span)?, dur_ms(gap)?);
    for b in 0..bursts {
        for a in 0..accounts {
            let start = BASE_MS + b as i64 * gap;
            for _ in 0..per_burst {
                let at = start + rng.random_range(0..=span);
                let eid = id(&mut rng);
                out.push(RawMessage {
                    transport_id: id(&mut rng),
                    body: eventbridge_alarm(&eid, &account(a), "burst", "ALARM", at),
                    raw: None,
                });
            }
        }
    }
    Ok(out)
}

/// `mixed`: tickets, their updates, alarms and OK transitions, unknown shapes, garbage and
/// transport redeliveries, on an advancing clock.
fn mixed(count: usize, accounts: usize, seed: u64) -> Vec<RawMessage> {
    let mut out = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut clock = BASE_MS;
    let mut tickets = 0usize;
    for _ in 0..count {
        clock += rng.random_range(1_000..120_000);
        let roll = rng.random_range(0..100);
        let body = match roll {
            0..=24 => {
                if tickets > 0 && rng.random_bool(0.3) {
                    ticket(
                        &format!("MIX-{}", rng.random_range(1..=tickets)),
                        "update",
                        Some("jira:issue_updated"),
                    )
                } else {
                    tickets += 1;
                    ticket(&format!("MIX-{tickets}"), "new", Some("jira:issue_created"))
                }
            }
            25..=89 => {
                let state = if rng.random_bool(0.1) { "OK" } else { "ALARM" };
                let acct = account(rng.random_range(0..(accounts).max(1)));
                eventbridge_alarm(&id(&mut rng), &acct, "latency", state, clock)
            }
            90..=94 => "{\"not\": \"a known shape\"}".to_owned(),
            _ => {
                // A transport redelivery of an earlier message.
                if let Some(prev) = out.get(rng.random_range(0..out.len().max(1))).cloned() {
                    out.push(prev);
                    continue;
                }
                "garbage".to_owned()
            }
        };
        out.push(RawMessage {
            transport_id: id(&mut rng),
            body,
            raw: None,
        });
    }
    out
}

fn late_alarms(
    accounts: usize,
    pairs: usize,
    per_burst: usize,
    tickets: usize,
    junk: usize,
    shuffle: bool,
    seed: u64,
) -> Vec<RawMessage> {
    const MIN: i64 = 60_000;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut timed: Vec<(i64, String)> = Vec::new();
    let mut late: Vec<String> = Vec::new();
    for a in 0..accounts {
        let acct = account(a);
        for p in 0..pairs {
            // Pairs 6 hours apart; a burst spans 10 minutes.
            let start = BASE_MS + p as i64 * 360 * MIN + a as i64 * 1_000;
            for (burst, at) in [(0, start), (1, start + 100 * MIN)] {
                for k in 0..per_burst {
                    let t = at + (k as i64 * 10 * MIN) / per_burst.max(1) as i64;
                    let name = format!("late-{burst}");
                    timed.push((
                        t,
                        eventbridge_alarm(&id(&mut rng), &acct, &name, "ALARM", t),
                    ));
                }
            }
            // Within 1h of the first burst's last alarm and of the second's first.
            let bridge = start + 55 * MIN;
            late.push(eventbridge_alarm(
                &id(&mut rng),
                &acct,
                "late-bridge",
                "ALARM",
                bridge,
            ));
        }
    }
    for i in 0..tickets {
        let t = BASE_MS + rng.random_range(0..(pairs.max(1) as i64 * 360 * MIN));
        let body = if i >= 3 && i % 3 == 0 {
            ticket(
                &format!("LATE-{}", i / 3),
                "update",
                Some("jira:issue_updated"),
            )
        } else {
            ticket(
                &format!("LATE-{i}"),
                "late alarms",
                Some("jira:issue_created"),
            )
        };
        timed.push((t, body));
    }
    for i in 0..junk {
        let t = BASE_MS + rng.random_range(0..(pairs.max(1) as i64 * 360 * MIN));
        timed.push((t, format!("{{\"junk\": {i}}}")));
    }
    timed.sort_by_key(|(t, _)| *t);
    let mut bodies: Vec<String> = timed.into_iter().map(|(_, b)| b).collect();
    bodies.extend(late);
    if shuffle {
        bodies.shuffle(&mut rng);
    }
    bodies
        .into_iter()
        .map(|body| RawMessage {
            transport_id: id(&mut rng),
            body,
            raw: None,
        })
        .collect()
}

/// Renders messages as JSONL replay text.
pub fn to_jsonl(messages: &[RawMessage]) -> String {
    let mut s = String::with_capacity(messages.len() * 400);
    for m in messages {
        s.push_str(&serde_json::to_string(m).expect("RawMessage serialises"));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let spec = GenSpec::Mixed {
            count: 200,
            accounts: 3,
            seed: 9,
        };
        assert_eq!(generate(&spec).unwrap(), generate(&spec).unwrap());
        let other = GenSpec::Mixed {
            count: 200,
            accounts: 3,
            seed: 10,
        };
        assert_ne!(generate(&spec).unwrap(), generate(&other).unwrap());
    }

    #[test]
    fn generated_bodies_parse() {
        for m in generate(&GenSpec::AlarmStorm {
            alarms: 50,
            accounts: 5,
            span: "1h".into(),
            shuffle: false,
            seed: 1,
        })
        .unwrap()
        {
            crate::scheduling::domain::parse_message(&m.body).unwrap();
        }
        assert!(generate(&GenSpec::TicketFlood {
            rate: 10,
            duration: "bogus".into(),
            duplicates: 0.1,
            seed: 1
        })
        .is_err());
    }
}
