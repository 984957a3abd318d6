//! Wake-ups for queue consumers: a consumer sleeps until a task is pushed to its queue, and
//! fetches at once when one is.
//!
//! - **SQLite** has no notifications: every task this process pushes wakes the consumers of
//!   its queue here ([`queued`]); the poll stays for tasks pushed by other processes and for
//!   timers. A wake-up may come before the pushing transaction commits: the woken consumer's
//!   fetch is a write, and SQLite lets it run only once the pushing transaction (which holds
//!   the write lock from its `BEGIN IMMEDIATE`) has committed or rolled back, so it sees the
//!   task. A wake-up with nothing to fetch (a rollback, or a queue of the same name in another
//!   database of this process) costs one empty fetch.
//! - **Postgres** sends a NOTIFY from apalis's insert trigger at each push's commit, from any
//!   process. One connection per process listens ([`relay_notifies`]) and wakes the
//!   consumers of the queue named in each, the same way (apalis's own pubsub would hold a
//!   listening connection for each step queue: ten a process).
//!
//! On both backends apalis takes a wake-up even while the consumer's previous fetch is still
//! under way, and that fetch may have read the queue just before the push committed: its
//! empty answer would then park the consumer with the new task unseen until the next wake-up
//! (another push, the poll on SQLite, the 2 s heartbeat on Postgres: it was the Postgres p99 of
//! 150–220 ms in docs/benchmarks.md). So each wake-up is repeated once, [`AGAIN_AFTER`]
//! later, when that fetch has long come back ([`Wakes`]).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Mutex, OnceLock},
    task::{Context, Poll},
};

use futures::{channel::mpsc, Future, Stream, StreamExt};

/// The wake-up senders of each queue's consumers in this process.
fn consumers() -> &'static Mutex<HashMap<String, Vec<mpsc::Sender<()>>>> {
    static CONSUMERS: OnceLock<Mutex<HashMap<String, Vec<mpsc::Sender<()>>>>> = OnceLock::new();
    CONSUMERS.get_or_init(Default::default)
}

/// How long after a wake-up it is repeated (see the module's comment).
pub const AGAIN_AFTER: std::time::Duration = std::time::Duration::from_millis(25);

/// The wake-ups of one consumer of a queue: a stream that yields when a task was pushed to
/// it, and once more [`AGAIN_AFTER`] later. Wake-ups that come while one is pending are
/// folded into it (the channel holds one).
pub struct Wakes(Mutex<Inner>);

struct Inner {
    rx: mpsc::Receiver<()>,
    again: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for Wakes {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        match inner.rx.poll_next_unpin(cx) {
            Poll::Ready(Some(())) => {
                inner.again = Some(Box::pin(tokio::time::sleep(AGAIN_AFTER)));
                return Poll::Ready(Some(()));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if let Some(again) = inner.again.as_mut() {
            if again.as_mut().poll(cx).is_ready() {
                inner.again = None;
                return Poll::Ready(Some(()));
            }
        }
        Poll::Pending
    }
}

/// Subscribes a consumer to `queue`'s wake-ups; dropping the stream unsubscribes it.
pub fn subscribe(queue: &str) -> Wakes {
    let (tx, rx) = mpsc::channel(0);
    let mut map = consumers().lock().unwrap_or_else(|p| p.into_inner());
    map.entry(queue.to_owned()).or_default().push(tx);
    Wakes(Mutex::new(Inner { rx, again: None }))
}

/// Wakes every consumer of `queue` in this process.
pub fn queued(queue: &str) {
    let mut map = consumers().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(senders) = map.get_mut(queue) {
        // A full channel already holds a wake-up; a closed one belongs to a consumer that
        // ended, and is dropped here.
        senders.retain_mut(|s| match s.try_send(()) {
            Ok(()) => true,
            Err(e) => e.is_full(),
        });
    }
}

/// The channel apalis's insert trigger notifies, with `{"job_type": queue, "id": task}`.
const INSERTS: &str = "apalis::job::insert";

#[derive(serde::Deserialize)]
struct Insert {
    job_type: String,
}

/// Listens for apalis's insert notifications on Postgres, on a connection of its own: done
/// before the consumers start, so no push after their first fetch goes unseen.
pub async fn listen(
    pool: &sqlx::PgPool,
) -> Result<sqlx::postgres::PgListener, crate::error::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(INSERTS).await?;
    Ok(listener)
}

/// Relays the notifications `listener` ([`listen`]) receives to this process's consumers
/// ([`queued`]) until `stop` turns true. A lost connection is listened again (sqlx
/// reconnects); what was pushed meanwhile is found by a wake-up of every queue in `queues`
/// and, failing that, by each consumer's heartbeat fetch.
pub async fn relay_notifies(
    mut listener: sqlx::postgres::PgListener,
    queues: Vec<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), crate::error::Error> {
    loop {
        let next = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            next = listener.try_recv() => next,
        };
        match next {
            Ok(Some(n)) => match serde_json::from_str::<Insert>(n.payload()) {
                Ok(insert) => queued(&insert.job_type),
                Err(e) => {
                    tracing::debug!(payload = n.payload(), error = %e, "not an apalis insert")
                }
            },
            // The connection was lost and is re-established on the next call.
            Ok(None) => queues.iter().for_each(|q| queued(q)),
            Err(e) => {
                tracing::warn!(error = %e, "listening for queued tasks failed; listening again in a second");
                queues.iter().for_each(|q| queued(q));
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_push_wakes_each_consumer_of_its_queue_once_and_again_a_moment_later() {
        let mut a = subscribe("wake-test.q");
        let mut b = subscribe("wake-test.q");
        let mut other = subscribe("wake-test.other");
        queued("wake-test.q");
        queued("wake-test.q"); // folded into the pending one
        assert_eq!(a.next().await, Some(()));
        assert_eq!(b.next().await, Some(()));
        assert_eq!(
            futures::future::poll_immediate(other.next()).await,
            None,
            "another queue is not woken"
        );
        // The repeat, and nothing after it: two pushes before a fetch were one wake-up.
        assert_eq!(a.next().await, Some(()));
        assert_eq!(futures::future::poll_immediate(a.next()).await, None);
        drop(b);
        queued("wake-test.q");
        assert_eq!(
            consumers().lock().unwrap()["wake-test.q"].len(),
            1,
            "a dropped consumer is forgotten"
        );
        assert_eq!(a.next().await, Some(()));
    }
}
