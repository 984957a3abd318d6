//! **ingest** — persists a delivered message.
//!
//! Reads: the run input (`InboxMessage`: transport id, raw body, source, receive time).
//! Writes: one `messages` row (or `deliveries + 1` on a transport id seen before), and the
//! step's completion, which queues `decide` — all in one transaction.
//! Who runs it: the transport itself. [`crate::intake::inbox::submit`] calls [`store`] in
//! the transaction that starts the message's run and records this step done there
//! ([`crate::engine::batch::start_runs_first_done`]), so a message costs no queue task for it. As a
//! queued task it runs only for runs started before transports did that (a deploy in the
//! middle of a backlog); both paths are this file's [`store`].
//! Retry safety: nothing is written unless the whole transaction commits. A re-run after a
//! crash before the commit inserts the message as if for the first time (for the transport:
//! the transport delivers it again, since it deletes a message only after the commit); a
//! re-run after the commit finds the step done and does nothing. A redelivery (same
//! transport id, a new run) ends its run here without a second decision. The same transport
//! id with another body is stored under a derived id and goes on to `decide`, which rejects
//! it.

use futures::{future::BoxFuture, FutureExt};
use serde::{Deserialize, Serialize};

use super::{Step, StepError};
use crate::{
    context::Env,
    db::{now_ms, Tx},
    engine::{StepRun, Transition},
    error::Error,
    failpoint,
    scheduling::decide,
    scheduling::domain::Ingested,
    scheduling::store::sql::Tables,
};

pub const NAME: &str = crate::workflows::names::INGEST;

/// What `decide` reads: the stored message, or why there is none to decide.
impl crate::engine::StepOutput for Ingested {
    const STEP: &'static str = NAME;
}

/// A message as a transport hands it to the message workflow (the run's input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxMessage {
    /// The transport's id for the message (runs queued before this name read as well).
    #[serde(alias = "message_id")]
    pub transport_id: String,
    pub body: String,
    /// The body's bytes, hex, when they are not valid UTF-8 (`body` shows them as U+FFFD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_hex: Option<String>,
    pub source: String,
    pub received_ms: i64,
}

impl InboxMessage {
    /// The message a message-workflow run was started with.
    pub fn of_run(run: &StepRun) -> Result<InboxMessage, StepError> {
        serde_json::from_value(run.input.clone()).map_err(|e| {
            StepError::Fatal(format!(
                "run {} input is not an inbox message: {e}",
                run.run_id
            ))
        })
    }

    /// The raw bytes, if the body was not valid UTF-8.
    pub fn raw(&self) -> Result<Option<Vec<u8>>, StepError> {
        self.raw_hex
            .as_deref()
            .map(|h| {
                crate::scheduling::domain::from_hex(h)
                    .ok_or_else(|| StepError::Fatal("run input: raw_hex is not hex".into()))
            })
            .transpose()
    }
}

/// Stores `msg` in `tx` and says how its run goes on: to `decide` for a new message (or a
/// reused transport id), finished here for a redelivery.
pub async fn store(tx: &mut Tx, msg: &InboxMessage) -> Result<(Ingested, Transition), Error> {
    let raw = msg.raw().map_err(|e| Error::Invalid(e.to_string()))?;
    let ingested = decide::ingest(
        &mut Tables::real(tx),
        &msg.transport_id,
        &msg.source,
        &msg.body,
        raw.as_deref(),
        msg.received_ms,
    )
    .await?;
    let transition = match ingested {
        Ingested::New { .. } | Ingested::Reused { .. } => Transition::next(&ingested),
        Ingested::Redelivered { message_id }
        | Ingested::IdTaken {
            original_id: message_id,
        } => {
            tracing::info!(transport_id = %msg.transport_id, message_id, "redelivery: acknowledged without a new decision");
            Transition::finish(&ingested)
        }
    };
    Ok((ingested, transition))
}

/// Whether `ingested` is a delivery of a message already stored.
pub fn is_redelivery(ingested: &Ingested) -> bool {
    matches!(
        ingested,
        Ingested::Redelivered { .. } | Ingested::IdTaken { .. }
    )
}

pub struct Ingest;

impl Step for Ingest {
    fn run<'a>(&'a self, env: &'a Env, run: &'a StepRun) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let msg = InboxMessage::of_run(run)?;
            let mut tx = env.db.begin().await?;
            let (ingested, transition) = store(&mut tx, &msg).await?;
            run.complete(&mut tx, transition, now_ms()).await?;
            tx.commit().await?;
            failpoint::hit("ingest.after_commit");
            crate::telemetry::ingested(&msg.source, is_redelivery(&ingested));
            Ok(())
        }
        .boxed()
    }
}
