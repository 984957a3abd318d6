//! The SQS transport (docs/design.md section 1): long polls that store what they receive in the
//! durable inbox and delete it from the queue only once that is committed.
//!
//! - Several receivers poll at once (`sqs.receivers`), each `ReceiveMessage` waiting up to
//!   `sqs.wait` for up to `sqs.batch` messages, with `sqs.visibility` as the visibility timeout.
//! - While a batch is being stored, its visibility is extended every half timeout, so a slow
//!   database does not let SQS hand the same messages to another receiver.
//! - `DeleteMessageBatch` runs only after the inbox transaction commits. A crash before the
//!   commit leaves the messages in the queue (visible again after the timeout); a crash after it
//!   leaves them to be delivered again, and ingest recognises a redelivery by its message id.
//! - A malformed body is stored like any other: `decide` rejects it with its reason, and it
//!   is deleted from the queue, never looping (a queue's redrive policy never sees it).
//! - While the shutdown gate is closed, nothing is received: a poll in flight runs to its end
//!   and whatever it brought is made visible again at once (ChangeMessageVisibility 0), as is
//!   what a poll returns while the process stops. The drain waits for polls in flight (at most
//!   `sqs.wait`), so a deploy strands nothing and sends nothing to the dead-letter queue.

use std::{sync::Arc, time::Duration};

use aws_sdk_sqs::{
    types::{ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message},
    Client,
};
use tokio::sync::watch;

use crate::{
    aws, config::SqsConfig, db::Db, error::Error, failpoint, intake::inbox,
    scheduling::domain::RawMessage,
};

/// The transport's counters since start (for `conductor bench ingest` and the logs).
#[derive(Debug, Default)]
pub struct Counters {
    pub received: std::sync::atomic::AtomicU64,
    pub stored: std::sync::atomic::AtomicU64,
    pub deleted: std::sync::atomic::AtomicU64,
    pub store_failures: std::sync::atomic::AtomicU64,
}

/// A queue and the client that polls it.
#[derive(Clone, Debug)]
pub struct Queue {
    pub client: Client,
    pub url: String,
    pub config: SqsConfig,
}

impl Queue {
    pub fn new(sdk: &aws_config::SdkConfig, config: &SqsConfig) -> Result<Queue, Error> {
        let url = config
            .queue_url
            .clone()
            .ok_or_else(|| Error::Config("sqs.queue_url is not set".into()))?;
        Ok(Queue {
            client: Client::new(sdk),
            url,
            config: config.clone(),
        })
    }

    /// Fails with a clear error when the queue cannot be reached (a wrong URL, no access),
    /// so `conductor run` stops at start instead of logging failed polls forever.
    /// Warns when the queue's redrive policy moves a message to its dead-letter queue after
    /// fewer than [`MIN_RECEIVES`] receives.
    pub async fn check(&self) -> Result<(), Error> {
        use aws_sdk_sqs::types::QueueAttributeName;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| match aws::classify("GetQueueAttributes", e) {
                Error::Refused(m) | Error::Unavailable(m) => {
                    Error::Config(format!("SQS queue {}: {m}", self.url))
                }
                e => e,
            })?;
        let receives = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
            .and_then(|p| max_receive_count(p));
        if let Some(n) = receives.filter(|n| *n < MIN_RECEIVES) {
            tracing::warn!(
                queue = %self.url,
                max_receive_count = n,
                "the queue's redrive policy sends a message to the dead-letter queue after {n} receive(s): a crash while a batch is in flight can send a whole batch there; use a maxReceiveCount of 5 or more"
            );
        }
        Ok(())
    }

    /// Makes `messages` visible again at once: received, but not to be stored by this
    /// process (its gate closed, or it is stopping). Best effort: what fails comes back after
    /// its visibility timeout.
    pub async fn release(&self, messages: &[Message]) {
        let entries = visibility_entries(messages, 0);
        if entries.is_empty() {
            return;
        }
        match self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                let released = out.successful().len();
                tracing::info!(
                    released,
                    "released messages received while intake was closing"
                );
                for f in out.failed() {
                    tracing::warn!(id = %f.id(), code = %f.code(), "SQS did not release a message; it returns after its visibility timeout");
                }
            }
            Err(e) => {
                tracing::warn!(error = %aws::classify("ChangeMessageVisibilityBatch", e), "could not release received messages; they return after their visibility timeout")
            }
        }
    }

    fn visibility_secs(&self) -> i32 {
        self.config.visibility.as_secs().clamp(1, 43_200) as i32
    }

    /// One long poll; an empty batch when nothing came.
    pub async fn receive(&self) -> Result<Vec<Message>, Error> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(self.config.batch)
            .wait_time_seconds(self.config.wait.as_secs() as i32)
            .visibility_timeout(self.visibility_secs())
            .send()
            .await
            .map_err(|e| aws::classify("ReceiveMessage", e));
        let messages = out.map(|o| o.messages.unwrap_or_default());
        crate::telemetry::sqs(
            "receive",
            messages.is_ok(),
            messages.as_ref().map_or(0, |m| m.len() as u64),
        );
        messages
    }

    /// Keeps `messages` invisible for another full timeout.
    async fn extend(&self, messages: &[Message]) -> Result<(), Error> {
        let entries = visibility_entries(messages, self.visibility_secs());
        self.client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| aws::classify("ChangeMessageVisibilityBatch", e))?;
        Ok(())
    }

    /// Deletes `messages`; how many SQS confirmed.
    async fn delete(&self, messages: &[Message]) -> Result<usize, Error> {
        let entries = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_receipt_handle(m.receipt_handle.clone())
                    .build()
                    .ok()
            })
            .collect::<Vec<_>>();
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| aws::classify("DeleteMessageBatch", e));
        crate::telemetry::sqs(
            "delete",
            out.is_ok(),
            out.as_ref().map_or(0, |o| o.successful.len() as u64),
        );
        let out = out?;
        for failed in &out.failed {
            // The message comes back after its timeout and is recognised as a redelivery.
            tracing::warn!(id = %failed.id, code = %failed.code, "SQS did not delete a stored message");
        }
        Ok(out.successful.len())
    }

    /// Stores a received batch in the inbox, extending its visibility while that runs, then
    /// deletes it from the queue.
    pub async fn store(
        &self,
        db: &Db,
        messages: &[Message],
        counters: &Counters,
    ) -> Result<(), Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let raw: Vec<RawMessage> = messages
            .iter()
            .filter_map(|m| {
                Some(RawMessage {
                    transport_id: m.message_id.clone()?,
                    body: m.body.clone().unwrap_or_default(),
                    raw: None,
                })
            })
            .collect();
        counters.received.fetch_add(raw.len() as u64, Relaxed);
        failpoint::hit("sqs.before_commit");
        let half = (self.config.visibility / 2).max(Duration::from_millis(500));
        let submit = inbox::submit(db, &raw, "sqs");
        tokio::pin!(submit);
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        let stored = loop {
            tokio::select! {
                r = &mut submit => break r,
                _ = renew.tick() => {
                    if let Err(e) = self.extend(messages).await {
                        tracing::warn!(error = %e, "could not extend the batch's visibility");
                    }
                }
            }
        };
        if let Err(e) = stored {
            counters.store_failures.fetch_add(1, Relaxed);
            // Not deleted: SQS makes the batch visible again after its timeout.
            return Err(e);
        }
        counters.stored.fetch_add(raw.len() as u64, Relaxed);
        failpoint::hit("sqs.after_commit");
        let deleted = self.delete(messages).await?;
        counters.deleted.fetch_add(deleted as u64, Relaxed);
        tracing::debug!(received = raw.len(), deleted, "SQS batch stored");
        Ok(())
    }
}

/// ChangeMessageVisibilityBatch entries setting `messages`' visibility to `secs`.
fn visibility_entries(
    messages: &[Message],
    secs: i32,
) -> Vec<ChangeMessageVisibilityBatchRequestEntry> {
    messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .set_receipt_handle(m.receipt_handle.clone())
                .visibility_timeout(secs)
                .build()
                .ok()
        })
        .collect()
}

/// The fewest receives a redrive policy should allow before dead-lettering a message.
pub const MIN_RECEIVES: u32 = 3;

/// `maxReceiveCount` of a redrive policy's JSON (a number or, as SQS writes it, a string).
fn max_receive_count(policy: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(policy).ok()?;
    match &v["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Runs `queue.config.receivers` receivers until `stop` turns true; they poll only while
/// `open` (the shutdown gate) is true.
pub async fn run(
    queue: Queue,
    db: Db,
    stop: watch::Receiver<bool>,
    open: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    let mut receivers = Vec::new();
    for n in 0..queue.config.receivers {
        receivers.push(tokio::spawn(receiver(
            n,
            queue.clone(),
            db.clone(),
            stop.clone(),
            open.clone(),
            counters.clone(),
        )));
    }
    tracing::info!(queue = %queue.url, receivers = receivers.len(), "SQS transport polling");
    for r in receivers {
        let _ = r.await;
    }
}

async fn receiver(
    n: usize,
    queue: Queue,
    db: Db,
    mut stop: watch::Receiver<bool>,
    mut open: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = open.wait_for(|o| *o) => if r.is_err() { return },
        }
        // A poll in flight is never dropped: SQS would still hand it messages that nobody
        // stores, invisible for their whole timeout (and one receive nearer the dead-letter
        // queue). It ends within `sqs.wait`; what it brings after the gate closed, or while
        // the process stops, is released at once.
        let received = queue.receive().await;
        let closed = !*open.borrow() || *stop.borrow();
        let result = match received {
            Ok(messages) if messages.is_empty() => Ok(()),
            Ok(messages) if closed => {
                queue.release(&messages).await;
                Ok(())
            }
            Ok(messages) => queue.store(&db, &messages, &counters).await,
            Err(e) => Err(e),
        };
        if *stop.borrow() {
            return;
        }
        match result {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(receiver = n, error = %e, retry_in = %humantime::format_duration(backoff), "SQS receive or store failed");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redrive_policies_of_either_spelling() {
        assert_eq!(
            super::max_receive_count(r#"{"deadLetterTargetArn":"arn:x","maxReceiveCount":"1"}"#),
            Some(1)
        );
        assert_eq!(
            super::max_receive_count(r#"{"maxReceiveCount":5}"#),
            Some(5)
        );
        assert_eq!(super::max_receive_count("nope"), None);
    }
}
