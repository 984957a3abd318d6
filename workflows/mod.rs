//! Workflows: each one is a named, ordered list of steps that reads top to bottom as its
//! pipeline in docs/design.md. The engine that runs them is [`crate::engine`].
//!
//! Runs in flight only ever store step *names*, so a deploy may add or reorder steps: a run
//! continues from the step it finished to whatever follows that name in the new definition.

pub mod job;
pub mod message;
pub mod names;
pub mod notice;

use crate::engine::Workflow;

/// Every workflow this build knows, for resolving a stored run's `workflow` name.
pub const ALL: &[&Workflow] = &[&message::MESSAGE, &job::JOB, &notice::NOTICE];

/// The workflow with this name.
pub fn by_name(name: &str) -> Option<&'static Workflow> {
    ALL.iter().copied().find(|w| w.name == name)
}
