//! The one retry pause of hax: capped exponential backoff, with optional
//! "equal jitter" (half the pause fixed, half random) so that many clients
//! failing together do not retry in lockstep.

use std::time::Duration;

/// Pauses between attempts: `initial`, then doubled each time up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: bool,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial` (at least 1 ms), doubling up to `max`, without
    /// jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            jitter: false,
            next: initial,
        }
    }

    /// The same, each pause jittered: half of it fixed, half random.
    pub fn jittered(self) -> Self {
        Backoff {
            jitter: true,
            ..self
        }
    }

    /// The pause before the next attempt; the one after is doubled (capped).
    pub fn next_pause(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        self.jitter_of(base)
    }

    /// The pause that [`Backoff::next_pause`] will return next, before
    /// jitter.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the first pause, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The pause before retry number `retry` (0-based), without changing
    /// this backoff.
    pub fn pause_of(&self, retry: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(2u32.saturating_pow(retry.min(16)))
            .min(self.max);
        self.jitter_of(base)
    }

    fn jitter_of(&self, base: Duration) -> Duration {
        if !self.jitter {
            return base;
        }
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let pauses: Vec<u128> = (0..4).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(100));
        assert_eq!(b.pause_of(1), Duration::from_millis(200));
        assert_eq!(b.pause_of(40), Duration::from_millis(350));
    }

    #[test]
    fn jitter_keeps_half_and_never_exceeds_the_pause() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).jittered();
        for retry in 0..8 {
            let full =
                Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).pause_of(retry);
            for _ in 0..50 {
                let p = b.pause_of(retry);
                assert!(p >= full / 2 && p <= full, "{p:?} of {full:?}");
            }
        }
    }

    #[test]
    fn degenerate_bounds_are_raised() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next_pause(), Duration::from_millis(1));
        assert_eq!(b.next_pause(), Duration::from_millis(1));
    }
}
