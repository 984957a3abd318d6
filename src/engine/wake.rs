//! In-process wake-ups for SQLite queue consumers. Postgres wakes a consumer with the NOTIFY
//! apalis's insert trigger sends at commit; SQLite has nothing of the kind, so an idle
//! consumer would see a new task only at its next poll. Every task this process pushes wakes
//! the consumers of its queue here instead, so a message is decided moments after it is
//! stored; the poll stays for tasks pushed by other processes and for timers.
//!
//! A wake-up may come before the pushing transaction commits: the woken consumer's fetch is a
//! write, and SQLite lets it run only once the pushing transaction (which holds the write
//! lock from its `BEGIN IMMEDIATE`) has committed or rolled back, so it sees the task. A
//! wake-up with nothing to fetch (a rollback, or a queue of the same name in another
//! database of this process) costs one empty fetch.
//!
//! apalis takes a wake-up even while the consumer's previous fetch is still under way, and
//! that fetch may have run just before the push: its empty answer would then park the
//! consumer with the new task unseen until the poll. So each wake-up is repeated once,
//! [`AGAIN_AFTER`] later, when that fetch has long come back.

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
