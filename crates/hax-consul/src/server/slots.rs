//! The watch server's connection slots, and which connection gives its slot
//! up when they are all taken.
//!
//! A client that connects and then sends its request head slowly, or not at
//! all, holds a slot until the head deadline. Many such clients that
//! reconnect as soon as they are closed would keep every slot taken, and
//! Consul's watch deliveries and health checks would wait in the listen
//! backlog behind them. So when every slot is taken the new connection takes
//! the slot of the connection that has waited longest for a request head
//! (closing it), once that one has had [`HEAD_GRACE`] to send it. Only when
//! every slot is serving a request does the new connection wait for one to
//! end. A well-behaved client sends its head as soon as it has connected, so
//! it is served within its grace.
//!
//! The grace is what a client needs at least, on a busy machine, between
//! being accepted and its head being read; without it a flood turned slots
//! over every few tens of milliseconds and closed well-behaved connections
//! too. It also bounds the turnover: at most `max / HEAD_GRACE` closings a
//! second, and a well-behaved client waits at most about
//! `backlog / max * HEAD_GRACE` behind a flood.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a connection may wait for its request head before a new
/// connection may take its slot.
pub(super) const HEAD_GRACE: Duration = Duration::from_millis(200);

/// The slots of one server.
#[derive(Debug)]
pub(super) struct Slots {
    open: Mutex<Open>,
    freed: Notify,
    max: usize,
    taken_over: AtomicU64,
}

#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    conns: BTreeMap<u64, Conn>,
}

#[derive(Debug)]
struct Conn {
    /// Since when it waits for a request head; `None` while it serves one,
    /// or once it is closing.
    waiting_since: Option<Instant>,
    close: CancellationToken,
}

impl Conn {
    fn closing(&self) -> bool {
        self.close.is_cancelled()
    }
}

impl Slots {
    pub(super) fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            open: Mutex::new(Open::default()),
            freed: Notify::new(),
            max: max.max(1),
            taken_over: AtomicU64::new(0),
        })
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        // The map stays consistent whatever panicked while holding it.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a connection just accepted: a free one, else the one of
    /// the connection that has waited longest for a request head, else the
    /// first one that a finished connection frees.
    pub(super) async fn take(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            match self.try_take() {
                Ok(slot) => return slot,
                Err(Some(graced)) => {
                    tokio::select! {
                        _ = freed => {}
                        _ = tokio::time::sleep_until(graced) => {}
                    }
                }
                Err(None) => freed.await,
            }
        }
    }

    /// A slot, or when to try again: when the longest waiting connection's
    /// grace ends, or (`None`) when a slot is freed: every slot serves a
    /// request, or the one taken over is closing.
    fn try_take(self: &Arc<Self>) -> Result<Slot, Option<Instant>> {
        let mut open = self.open();
        if open.conns.len() >= self.max {
            let oldest = open
                .conns
                .iter()
                .filter_map(|(id, c)| c.waiting_since.map(|since| (since, *id)))
                .min();
            let Some((since, id)) = oldest else {
                return Err(None);
            };
            let graced = since + HEAD_GRACE;
            if graced > Instant::now() {
                return Err(Some(graced));
            }
            // The slot stays counted until the connection's task has closed
            // it (its descriptor with it): the server never holds more
            // connections than its slots, however late that task runs.
            if let Some(conn) = open.conns.get_mut(&id) {
                conn.waiting_since = None;
                conn.close.cancel();
                let n = self.taken_over.fetch_add(1, Ordering::Relaxed) + 1;
                // Each one is routine under a slow-client flood; say it
                // when it starts and now and then while it lasts.
                if n == 1 || n % 1_000 == 0 {
                    tracing::warn!(
                        connections = self.max,
                        taken_over = n,
                        "every http connection slot was taken: a new connection took the slot of the one waiting longest for its request head"
                    );
                }
            }
            return Err(None);
        }
        let id = open.next_id;
        open.next_id += 1;
        let close = CancellationToken::new();
        open.conns.insert(
            id,
            Conn {
                waiting_since: Some(Instant::now()),
                close: close.clone(),
            },
        );
        Ok(Slot {
            id,
            slots: Arc::clone(self),
            close,
        })
    }

    /// How many slots are held.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.open().conns.len()
    }
}

/// One connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub(super) struct Slot {
    id: u64,
    slots: Arc<Slots>,
    close: CancellationToken,
}

impl Slot {
    fn set_waiting(&self, waiting: bool) {
        if let Some(c) = self.slots.open().conns.get_mut(&self.id) {
            if !c.closing() {
                c.waiting_since = waiting.then(Instant::now);
            }
        }
    }

    /// Completes when a new connection took this slot.
    pub(super) async fn taken_over(&self) {
        self.close.cancelled().await
    }

    /// When the wait for the next request head exceeds `limit`; `None`
    /// while a request is served.
    pub(super) fn head_deadline(&self, limit: Duration) -> Option<Instant> {
        let open = self.slots.open();
        let since = open.conns.get(&self.id)?.waiting_since?;
        Some(since + limit)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let removed = self.slots.open().conns.remove(&self.id).is_some();
        if removed {
            self.slots.freed.notify_one();
        }
    }
}

/// A connection's service that tells its slot when a request is being served:
/// from its complete head to its response.
#[derive(Debug, Clone)]
pub(super) struct Marked<S> {
    pub(super) inner: S,
    pub(super) slot: Arc<Slot>,
}

impl<S, R> hyper::service::Service<R> for Marked<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: R) -> Self::Future {
        self.slot.set_waiting(false);
        let answer = self.inner.call(req);
        let slot = Arc::clone(&self.slot);
        Box::pin(async move {
            let r = answer.await;
            slot.set_waiting(true);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_server_gives_the_longest_waiting_slot_to_a_new_connection() {
        let slots = Slots::new(3);
        let first = slots.take().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = slots.take().await;
        let third = slots.take().await;
        // The first one is serving a request: it keeps its slot.
        first.set_waiting(false);
        let started = Instant::now();
        let fourth = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.take().await })
        };
        while !second.close.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            started.elapsed() >= HEAD_GRACE - Duration::from_millis(5),
            "the second one had its grace to send a head"
        );
        assert!(!first.close.is_cancelled() && !third.close.is_cancelled());
        // Its slot counts until it is closed.
        assert_eq!(slots.held(), 3);
        assert!(!fourth.is_finished());
        drop(second);
        let fourth = fourth.await.expect("join");
        assert_eq!(slots.held(), 3);
        drop((third, fourth));
        assert_eq!(slots.held(), 1);
    }

    #[tokio::test]
    async fn when_every_slot_serves_a_request_a_new_connection_waits_for_one_to_end() {
        let slots = Slots::new(2);
        let a = slots.take().await;
        let b = slots.take().await;
        a.set_waiting(false);
        b.set_waiting(false);
        let waiter = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.take().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "it took a slot that serves a request"
        );
        assert!(!a.close.is_cancelled() && !b.close.is_cancelled());
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a freed slot is handed on")
            .expect("join");
        assert_eq!(slots.held(), 2);
        // A slot back from serving waits again, from now on.
        b.set_waiting(true);
        assert!(b.head_deadline(Duration::from_secs(1)).is_some());
        drop(c);
    }
}
