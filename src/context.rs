//! What every step can reach while it runs.

use crate::{db::Db, policy::ChainingPolicy};

/// The shared environment of a conductor process's steps.
#[derive(Debug, Clone)]
pub struct Env {
    pub db: Db,
    /// The authoritative scheduling policy.
    pub policy: ChainingPolicy,
}
