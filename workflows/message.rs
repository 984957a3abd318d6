//! The message workflow (docs/design.md section 1): one run per delivered message.
//!
//! ```text
//! transport ──► ingest ──► decide
//!               (store,     (classify and schedule in one transaction;
//!                redelivery  a spawn creates the job row)
//!                ends here)
//! ```

use crate::engine::Workflow;

pub const MESSAGE: Workflow = Workflow {
    name: "message",
    steps: &[super::names::INGEST, super::names::DECIDE],
    // A message whose run fails keeps its stored row and its failed step (`conductor
    // quarantine` and the history views show it); nothing else to undo.
    on_failure: None,
};

/// The ordering key of a message: `alarm:<account>` for an alarm (alarms of one account are
/// decided in arrival order; the incidents they open depend on it), none for anything else.
pub fn order_key(body: &str) -> Option<String> {
    match crate::scheduling::domain::parse_message(body) {
        Ok(crate::scheduling::domain::Message::Alarm(a)) => Some(alarm_order_key(&a.account)),
        _ => None,
    }
}

/// The ordering key of an account's alarms.
pub fn alarm_order_key(account: &str) -> String {
    format!("alarm:{account}")
}
