//! Scheduling: what a message is, and whether it starts an agent (docs/design.md sections 2, 3, 8).
//!
//! - [`domain`]: messages, decisions and the parsing that builds them.
//! - [`policy`]: the scheduling policy, the decision given the stored state, with no I/O.
//! - [`decide`]: ingest and decide, shared by the live pipeline and the scenario replay;
//!   [`decide::decision`] is the decision itself, on the real tables or a candidate's.
//! - [`store`]: the tables the decision reads and writes, behind one trait.
//! - [`flags`]: `incidents`, `policy` and `candidate`, shared in the database.
//! - [`shadow`]: a candidate policy deciding beside the authoritative one, and its verdicts.

pub mod decide;
pub mod domain;
pub mod flags;
pub mod policy;
pub mod shadow;
pub mod store;
