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
    steps: &[crate::steps::ingest::NAME, crate::steps::decide::NAME],
    // A message whose run fails keeps its stored row and its failed step (`conductor
    // quarantine` and the history views show it); nothing else to undo.
    on_failure: None,
};
