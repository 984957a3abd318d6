//! The storage that feeds scheduling, behind one trait so the decide code is written once.
//!
//! [`Store`] is everything [`crate::scheduling::decide`] reads and writes. Two implementations:
//!
//! - [`sql`]: named queries run in the caller's transaction, statement by statement. This is
//!   the live path on both backends, race-free across replicas on Postgres.
//! - [`write_behind`]: a replay store for SQLite. It loads the rows a batch of messages can
//!   touch in a few queries, decides in memory, and writes the batch's rows back with
//!   multi-row statements in the same transaction. Same decisions, same rows, far fewer
//!   round trips (sqlx-sqlite hands every statement to a worker thread).

pub mod sql;
pub mod write_behind;

pub use sql::decision_from_row;

use crate::{
    error::Error,
    scheduling::domain::{Alarm, Decision, Ingested, SubjectKind, Ticket},
    scheduling::policy::IncidentSpan,
};

/// The scheduling state one policy decision reads and writes: tickets, alarms, incidents and
/// jobs. [`sql::Tables`] implements it on the real tables ([`sql::Tables::real`]) and on a
/// candidate's shadow tables ([`sql::Scope::Candidate`], for [`crate::scheduling::shadow`]),
/// with the same named queries, which is why the decision code runs unchanged on both;
/// [`write_behind`] implements it in memory for SQLite replays. Nothing here commits.
#[allow(async_fn_in_trait)] // used generically, never as a trait object
pub trait State {
    /// Serialises alarm decisions of one AWS account across replicas.
    async fn lock_account(&mut self, account: &str) -> Result<(), Error>;
    async fn insert_rejected(
        &mut self,
        message_id: i64,
        reason: &str,
        ms: i64,
    ) -> Result<(), Error>;
    /// Records the first sighting of a ticket identity; false when it was seen before.
    async fn insert_ticket(&mut self, t: &Ticket, message_id: i64, ms: i64) -> Result<bool, Error>;
    /// A ticket's first message and the job it spawned.
    async fn ticket_origin(&mut self, key: &str) -> Result<(i64, Option<i64>), Error>;
    /// Stores an alarm event: its row id, or None when the event id was seen before.
    async fn insert_alarm(&mut self, a: &Alarm, message_id: i64) -> Result<Option<i64>, Error>;
    /// The message that first carried an alarm event id, and its incident.
    async fn alarm_origin(&mut self, event_id: &str) -> Result<(i64, Option<i64>), Error>;
    /// Open incidents of an account whose span overlaps `[lo, hi]`, of every grouping (a
    /// superset is allowed: the policy filters).
    async fn open_incidents_near(
        &mut self,
        account: &str,
        lo: i64,
        hi: i64,
    ) -> Result<Vec<IncidentSpan>, Error>;
    /// Opens an incident of `account`, keyed by `alarm_name` when the policy groups by it.
    async fn open_incident(
        &mut self,
        account: &str,
        alarm_name: Option<&str>,
        event_ms: i64,
        message_id: i64,
        ms: i64,
    ) -> Result<i64, Error>;
    /// Widens an incident's span to cover `[first, last]` and counts `added` more alarms.
    async fn extend_incident(
        &mut self,
        id: i64,
        first: i64,
        last: i64,
        added: i64,
    ) -> Result<(), Error>;
    /// Folds `other` into `into`: marks it merged, moves its alarms, widens `into`.
    async fn merge_incident(
        &mut self,
        into: i64,
        other: i64,
        message_id: i64,
        ms: i64,
    ) -> Result<(), Error>;
    async fn set_alarm_incident(&mut self, alarm_id: i64, incident: i64) -> Result<(), Error>;
    /// Creates the job a spawn decision asks for; None where no job is ever created (shadow).
    async fn insert_job(
        &mut self,
        kind: SubjectKind,
        ticket_key: Option<&str>,
        incident: Option<i64>,
        message_id: i64,
        ms: i64,
    ) -> Result<Option<i64>, Error>;
}

/// The real scheduling transaction: the state, plus messages, decisions, and the candidate's
/// evaluation beside them. Nothing here commits.
#[allow(async_fn_in_trait)] // used generically, never as a trait object
pub trait Store: State {
    /// Records a delivery: a new message, one more delivery of a transport id seen before
    /// with the same body, or [`Ingested::IdTaken`] when that id holds another body (nothing
    /// written). `raw` is the bytes when the body is not valid UTF-8; the stored text never
    /// holds NUL ([`crate::scheduling::domain::storable_body`]). `reuses` marks a message stored under a
    /// derived id ([`crate::scheduling::domain::reused_transport_id`]).
    async fn insert_message(
        &mut self,
        transport_id: &str,
        source: &str,
        body: &str,
        raw: Option<&[u8]>,
        reuses: Option<i64>,
        received_ms: i64,
    ) -> Result<Ingested, Error>;
    /// Locks the message against other deciders (a duplicated task, two replicas) and returns
    /// the decision already stored for it, if any.
    async fn lock_decided(&mut self, message_id: i64) -> Result<Option<Decision>, Error>;
    async fn insert_decision(
        &mut self,
        message_id: i64,
        d: &Decision,
        policy: &str,
        decided_ms: i64,
    ) -> Result<(), Error>;
    /// The SQL transaction a candidate policy is evaluated in, beside the real decision (the
    /// shadow tables live there); an error if this store cannot evaluate candidates.
    fn candidate_tx(&mut self) -> Result<&mut crate::db::Tx, Error>;
}
