//! The embedded transport: `conductor submit` puts messages into the durable queue as message
//! workflow runs, read from JSON files (one message each) or JSONL replay files.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{
    db::{now_ms, Db},
    engine,
    error::Error,
    failpoint,
    scheduling::domain::RawMessage,
    steps::ingest::{self, InboxMessage},
    workflows::message::MESSAGE,
};

/// Reads a JSONL replay file: one `{"message_id": "...", "body": "..."}` per non-empty line.
/// A malformed line is an error naming the file and line; nothing is returned then.
pub fn read_jsonl(path: &Path) -> Result<Vec<RawMessage>, Error> {
    JsonlReader::open(path)?.collect()
}

/// Parses JSONL replay text; `origin` names it in errors.
pub fn parse_jsonl(text: &str, origin: &str) -> Result<Vec<RawMessage>, Error> {
    JsonlReader::new(text.as_bytes(), origin).collect()
}

/// The messages of a JSONL replay input, read a line at a time: however long the input,
/// memory holds one line (`scenario replay` streams through it).
pub struct JsonlReader<R> {
    input: R,
    origin: String,
    line_no: usize,
    /// Bytes read so far (a progress bar's position).
    pub bytes_read: u64,
    line: String,
}

impl JsonlReader<std::io::BufReader<std::fs::File>> {
    /// Opens a replay file.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
        Ok(JsonlReader::new(
            std::io::BufReader::new(file),
            &path.display().to_string(),
        ))
    }
}

impl<R: std::io::BufRead> JsonlReader<R> {
    /// Reads `input`; `origin` names it in errors.
    pub fn new(input: R, origin: &str) -> Self {
        JsonlReader {
            input,
            origin: origin.to_owned(),
            line_no: 0,
            bytes_read: 0,
            line: String::new(),
        }
    }

    /// Up to `n` messages (fewer only at the end of the input).
    pub fn take_batch(&mut self, n: usize) -> Result<Vec<RawMessage>, Error> {
        self.by_ref().take(n).collect()
    }
}

impl<R: std::io::BufRead> Iterator for JsonlReader<R> {
    type Item = Result<RawMessage, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line.clear();
            let read = match self.input.read_line(&mut self.line) {
                Ok(0) => return None,
                Ok(n) => n,
                Err(e) => {
                    return Some(Err(Error::Invalid(format!(
                        "{}:{}: cannot read: {e}",
                        self.origin,
                        self.line_no + 1
                    ))))
                }
            };
            self.line_no += 1;
            self.bytes_read += read as u64;
            let line = self.line.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                continue;
            }
            return Some(parse_line(line, &self.origin, self.line_no));
        }
    }
}

/// One replay line, `n`th of `origin`.
fn parse_line(line: &str, origin: &str, n: usize) -> Result<RawMessage, Error> {
    let msg: RawMessage = serde_json::from_str(line).map_err(|e| {
        Error::Invalid(format!(
            "{origin}:{n}: not a replay line {{\"message_id\": \"...\", \"body\": \"...\"}}: {e}"
        ))
    })?;
    if msg.transport_id.is_empty() {
        return Err(Error::Invalid(format!("{origin}:{n}: empty message_id")));
    }
    Ok(msg)
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

/// Stores each message and starts its message workflow run, committing in batches: the
/// transport does the workflow's `ingest` step itself, in the transaction that starts the run
/// ([`engine::batch::start_runs_first_done`]), so a new message's run begins at `decide` and a
/// redelivery's run is finished before it is committed. A transport acknowledges its messages
/// (SQS: deletes them) only after this returns.
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
        let mut redeliveries = 0;
        let mut runs = Vec::with_capacity(chunk.len());
        for m in chunk {
            let msg = InboxMessage {
                transport_id: m.transport_id.clone(),
                body: m.body.clone(),
                raw_hex: m.raw.as_deref().map(crate::scheduling::domain::to_hex),
                source: source.to_owned(),
                received_ms: now,
            };
            let (ingested, transition) = ingest::store(&mut tx, &msg).await?;
            redeliveries += usize::from(ingest::is_redelivery(&ingested));
            runs.push(engine::batch::FirstDone {
                input: serde_json::to_value(msg).expect("InboxMessage serialises"),
                order_key: crate::workflows::message::order_key(&m.body),
                transition,
            });
        }
        // The chunk's runs in a few multi-row statements, in arrival order (their ids are the
        // arrival order `decide` keeps per account).
        engine::batch::start_runs_first_done(&mut tx, &MESSAGE, &runs, now).await?;
        tx.commit().await?;
        failpoint::hit("inbox.after_commit");
        crate::telemetry::ingested_many(source, chunk.len() - redeliveries, redeliveries);
        stored += chunk.len();
        progress(stored);
    }
    Ok(messages.len())
}
