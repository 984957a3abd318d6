//! Intake: how messages come in, and the gate that stops them coming in.
//!
//! - [`inbox`]: the embedded transport, `conductor submit` from JSON and JSONL files.
//! - [`sqs`]: the SQS transport, long polls stored in the inbox before they are deleted.
//! - [`gate`]: the shutdown gate, intake paused on every replica while jobs drain.

pub mod gate;
pub mod inbox;
pub mod sqs;
