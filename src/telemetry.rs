//! Prometheus metrics (`/metrics`), named and labelled in one place so a dashboard's queries
//! and the code agree. This file is shared ground (any layer may count an event); the gauges
//! read from the database are [`crate::observe::gauges`]'s. Two kinds:
//!
//! - **Events this process saw**, counted as they happen (`*_total` counters, the decide
//!   latency histogram): messages received and decided, attempts failed, worker heartbeats,
//!   shadow verdicts, SQS and forge calls. Per process, as Prometheus expects: sum them over
//!   replicas.
//! - **The database's state**, read when scraped ([`refresh`]): the backlog and its oldest
//!   message's age, jobs by state, the gate and the pause, the replicas and workers alive
//!   ([`crate::observe::gauges::refresh`]).
//!   Every replica reports the same values: take `max` over replicas, not `sum`.
//!
//! Labels are low-cardinality on purpose: kinds, decisions, reasons, outcomes — never an id.

use std::sync::OnceLock;

use metrics::{counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Seconds a decision took, from its step's start to its commit.
const DECIDE_SECONDS: &str = "conductor_decide_seconds";

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(DECIDE_SECONDS.into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            )
            .expect("buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder already installed (a test harness's) keeps its place; this handle
        // then renders what it has, nothing of the other.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// A message ingested (stored) from its source (`inbox`, `sqs`, ...): `new`, or a
/// `redelivery` of one already stored (acknowledged without a decision). Counted by the
/// process whose transport stored it (a conductor's SQS receiver or webhook listener; a
/// separate `conductor submit` counts its own, unseen).
pub fn ingested(source: &str, redelivery: bool) {
    if redelivery {
        ingested_many(source, 0, 1)
    } else {
        ingested_many(source, 1, 0)
    }
}

/// [`ingested`] for a stored batch: `new` messages and `redeliveries`.
pub fn ingested_many(source: &str, new: usize, redeliveries: usize) {
    handle();
    // The stored source is text: the label takes one of the known transports, never more.
    let source = match source {
        "inbox" => "inbox",
        "sqs" => "sqs",
        "webhook" => "webhook",
        _ => "other",
    };
    for (outcome, n) in [("new", new), ("redelivery", redeliveries)] {
        if n > 0 {
            counter!("conductor_messages_received_total", "source" => source, "outcome" => outcome)
                .increment(n as u64);
        }
    }
}

/// A webhook delivery (`jira`, `sns`) and what became of it: `stored`, `refused`.
pub fn webhook(endpoint: &'static str, outcome: &'static str) {
    handle();
    counter!("conductor_webhook_deliveries_total", "endpoint" => endpoint, "outcome" => outcome)
        .increment(1);
}

/// A decision committed: the message's kind (`ticket`, `alarm`, `unknown`) and the decision.
pub fn decided(kind: &'static str, decision: &'static str, seconds: f64) {
    handle();
    counter!("conductor_messages_decided_total", "kind" => kind, "decision" => decision)
        .increment(1);
    histogram!(DECIDE_SECONDS).record(seconds);
}

/// A worker attempt that failed, by the class of its reason (the reason itself is free text:
/// it stays in `job_attempts.failure`).
pub fn attempt_failed(reason: &str) {
    handle();
    counter!("conductor_attempts_failed_total", "reason" => failure_class(reason)).increment(1);
}

/// A failure reason's class, for a label: few values, whatever the text.
pub fn failure_class(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("handshake") {
        "handshake_timeout"
    } else if r.contains("lease") || r.contains("heartbeat") {
        "lease_expired"
    } else if r.contains("spawn") || r.contains("start") {
        "spawn_failed"
    } else if r.contains("gave up") {
        "gave_up"
    } else if r.contains("report") || r.contains("agent") || r.contains("exit") {
        "agent_failed"
    } else {
        "other"
    }
}

/// A worker's heartbeat, received.
pub fn heartbeat() {
    handle();
    counter!("conductor_worker_heartbeats_total").increment(1);
}

/// A candidate policy's verdict on one message.
pub fn shadow_verdict(verdict: &'static str) {
    handle();
    counter!("conductor_shadow_verdicts_total", "verdict" => verdict).increment(1);
}

/// An SQS call: `receive`, `delete`; `ok` or `error`; `messages` it carried.
pub fn sqs(op: &'static str, ok: bool, messages: u64) {
    handle();
    let outcome = if ok { "ok" } else { "error" };
    counter!("conductor_sqs_calls_total", "op" => op, "outcome" => outcome).increment(1);
    if messages > 0 {
        counter!("conductor_sqs_messages_total", "op" => op).increment(messages);
    }
}

/// A forge call (`open_pull_request`, `open_issue`) on a forge (`github`, `local`), and its
/// outcome: `ok`, `unavailable` (retried) or `refused`.
pub fn forge(forge: &'static str, op: &'static str, result: &Result<impl Sized, crate::Error>) {
    handle();
    let outcome = match result {
        Ok(_) => "ok",
        Err(crate::Error::Unavailable(_)) => "unavailable",
        Err(crate::Error::Throttled { .. }) => "rate_limited",
        Err(_) => "refused",
    };
    counter!("conductor_forge_calls_total", "forge" => forge, "op" => op, "outcome" => outcome)
        .increment(1);
}

/// The forge refused a call for its rate limit (HTTP 429, or 403 naming the limit); the step
/// retries after its backoff.
pub fn forge_rate_limited() {
    handle();
    counter!("conductor_forge_rate_limited_total").increment(1);
}

/// The text Prometheus scrapes (after [`crate::observe::gauges::refresh`]).
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}
