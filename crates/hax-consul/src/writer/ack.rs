//! The acknowledgement of a write: completed once what it asked for is
//! durable in Consul, or failed; one ack can be split among several writes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::op::*;

/// What to do once a write is durable (or definitely failed). Called once,
/// from the writer task: it must not block.
pub struct Ack(Box<dyn FnOnce(Result<(), WriteError>) + Send>);

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ack")
    }
}

impl Ack {
    /// An ack calling `f` with the outcome.
    pub fn new(f: impl FnOnce(Result<(), WriteError>) + Send + 'static) -> Self {
        Ack(Box::new(f))
    }

    /// An ack and the future that resolves with its outcome.
    pub fn channel() -> (Ack, AckWaiter) {
        let (tx, rx) = oneshot::channel();
        (
            Ack::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
            AckWaiter(rx),
        )
    }

    /// Splits into `n` acks; this one completes once all of them have, with
    /// the first error among them. `n == 0` completes it at once.
    pub fn split(self, n: usize) -> Vec<Ack> {
        if n == 0 {
            self.complete(Ok(()));
            return Vec::new();
        }
        let group = AckGroup::new(self, n);
        (0..n).map(|_| AckGroup::part(&group)).collect()
    }

    /// [`Ack::split`] in two.
    pub fn split_pair(self) -> (Ack, Ack) {
        let group = AckGroup::new(self, 2);
        (AckGroup::part(&group), AckGroup::part(&group))
    }

    /// Runs the ack.
    pub fn complete(self, outcome: Result<(), WriteError>) {
        (self.0)(outcome)
    }
}

struct AckGroup {
    remaining: usize,
    outcome: Result<(), WriteError>,
    ack: Option<Ack>,
}

impl AckGroup {
    fn new(ack: Ack, n: usize) -> Arc<Mutex<AckGroup>> {
        Arc::new(Mutex::new(AckGroup {
            remaining: n,
            outcome: Ok(()),
            ack: Some(ack),
        }))
    }

    /// One of the acks the group's ack waits for.
    fn part(group: &Arc<Mutex<AckGroup>>) -> Ack {
        let group = Arc::clone(group);
        Ack::new(move |outcome| {
            let done = {
                let mut g = lock(&group);
                if let (Err(e), Ok(())) = (outcome, &g.outcome) {
                    g.outcome = Err(e);
                }
                g.remaining -= 1;
                if g.remaining == 0 {
                    g.ack.take().map(|a| (a, g.outcome.clone()))
                } else {
                    None
                }
            };
            if let Some((ack, outcome)) = done {
                ack.complete(outcome);
            }
        })
    }
}

/// Resolves with the outcome of an [`Ack::channel`] ack;
/// [`WriteError::Abandoned`] if the ack was dropped unrun.
#[derive(Debug)]
pub struct AckWaiter(oneshot::Receiver<Result<(), WriteError>>);

impl Future for AckWaiter {
    type Output = Result<(), WriteError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(WriteError::Abandoned)))
    }
}

/// Locks `m`; a panic while holding the lock leaves plain data behind.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::Future;
    use std::task::Waker;

    fn now<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_pair_completes_once_both_have_with_the_first_error() {
        let (ack, mut w) = Ack::channel();
        let (a, b) = ack.split_pair();
        a.complete(Err(WriteError::Closed));
        assert!(now(&mut w).is_pending(), "one of two");
        b.complete(Err(WriteError::Abandoned));
        assert!(matches!(now(&mut w), Poll::Ready(Err(WriteError::Closed))));

        let (ack, mut w) = Ack::channel();
        let (a, b) = ack.split_pair();
        b.complete(Ok(()));
        a.complete(Ok(()));
        assert!(matches!(now(&mut w), Poll::Ready(Ok(()))));
    }
}
