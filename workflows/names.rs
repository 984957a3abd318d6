//! Every step's name, in one place: the name is what a run stores and what its apalis queue
//! is called (`conductor.<name>`), so it never changes once deployed. A step reads another
//! step's output, or sends its run back to another step, by these names alone, without
//! depending on that step's code.
//!
//! Each step's file in `steps/` is named as the step, but for `await`, a Rust keyword:
//! `steps/await_report.rs`.

pub const INGEST: &str = "ingest";
pub const DECIDE: &str = "decide";
pub const SETTLE: &str = "settle";
pub const CLAIM: &str = "claim";
pub const SPAWN: &str = "spawn";
pub const DELIVER: &str = "deliver";
pub const AWAIT: &str = "await";
pub const OPEN_PR: &str = "open_pr";
pub const FINISH: &str = "finish";
pub const NOTIFY: &str = "notify";
