//! What an operator sees from outside (docs/design.md section 10): the replicas that are alive
//! ([`replicas`]), the answer to "behind or stuck?" that `conductor status`, `/metrics` and the
//! console share ([`status`]), and the gauges read from the database ([`gauges`]; the event
//! counters are [`crate::telemetry`]'s, shared ground).

pub mod gauges;
pub mod replicas;
pub mod status;
