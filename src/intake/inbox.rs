//! The embedded transport: `conductor submit` puts messages into the durable queue as message
//! workflow runs, read from JSON files (one message each) or JSONL replay files.

use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    db::{now_ms, Db},
    engine,
    error::Error,
    scheduling::domain::RawMessage,
    steps::ingest::InboxMessage,
    workflows::message::MESSAGE,
};

/// Reads a JSONL replay file: one `{"message_id": "...", "body": "..."}` per non-empty line.
/// A malformed line is an error naming the file and line; nothing is returned then.
pub fn read_jsonl(path: &Path) -> Result<Vec<RawMessage>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
    parse_jsonl(&text, &path.display().to_string())
}

/// Parses JSONL replay text; `origin` names it in errors.
pub fn parse_jsonl(text: &str, origin: &str) -> Result<Vec<RawMessage>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let msg: RawMessage = serde_json::from_str(line).map_err(|e| {
            Error::Invalid(format!(
                "{origin}:{}: not a replay line {{\"message_id\": \"...\", \"body\": \"...\"}}: {e}",
                i + 1
            ))
        })?;
        if msg.transport_id.is_empty() {
            return Err(Error::Invalid(format!(
                "{origin}:{}: empty message_id",
                i + 1
            )));
        }
        out.push(msg);
    }
    Ok(out)
}

/// The transport id given to a message submitted as a plain file: a hash of its body, so
/// submitting the same file twice is a redelivery, as it would be from SQS.
pub fn content_id(body: &str) -> String {
    content_id_of(body.as_bytes())
}

/// [`content_id`] of bytes.
pub fn content_id_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Reads submission inputs: `*.jsonl` files as replay files, anything else as one message body
/// (kept as is even if it is not JSON: decide rejects it with its reason, nothing is lost).
pub fn read_inputs(paths: &[impl AsRef<Path>]) -> Result<Vec<RawMessage>, Error> {
    let mut out = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.extension().is_some_and(|e| e == "jsonl") {
            out.extend(read_jsonl(path)?);
        } else {
            // Whatever the bytes: a body that is not UTF-8 is stored as it came and rejected
            // with that reason, never refused at the door.
            let bytes = std::fs::read(path)
                .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
            out.push(RawMessage::from_bytes(content_id_of(&bytes), bytes));
        }
    }
    Ok(out)
}

/// Starts one message workflow run per message, committing in batches.
pub async fn submit(db: &Db, messages: &[RawMessage], source: &str) -> Result<usize, Error> {
    submit_reporting(db, messages, source, &|_| {}).await
}

/// [`submit`], reporting how many are stored after each committed chunk (a progress bar).
pub async fn submit_reporting(
    db: &Db,
    messages: &[RawMessage],
    source: &str,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<usize, Error> {
    let mut stored = 0;
    for chunk in messages.chunks(500) {
        let mut tx = db.begin().await?;
        let now = now_ms();
        for m in chunk {
            let input = InboxMessage {
                transport_id: m.transport_id.clone(),
                body: m.body.clone(),
                raw_hex: m.raw.as_deref().map(crate::scheduling::domain::to_hex),
                source: source.to_owned(),
                received_ms: now,
            };
            let input: Value = serde_json::to_value(input).expect("InboxMessage serialises");
            let key = crate::workflows::message::order_key(&m.body);
            engine::start_ordered_run(&mut tx, &MESSAGE, &input, key.as_deref(), now).await?;
        }
        tx.commit().await?;
        stored += chunk.len();
        progress(stored);
    }
    Ok(messages.len())
}
