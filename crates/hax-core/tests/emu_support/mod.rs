//! What the tests on the emulator without a simulated cluster share: a log
//! of what hax's callbacks saw, waited on with a deadline, and free ports.

#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for the events it expects.
const WAIT: Duration = Duration::from_secs(15);

/// The callbacks' events, a line each, in the order they came.
#[derive(Default)]
pub struct Log {
    events: Mutex<Vec<String>>,
    cv: Condvar,
}

impl Log {
    pub fn push(&self, s: String) {
        self.events.lock().unwrap().push(s);
        self.cv.notify_all();
    }

    /// The events once `pred` holds of them; fails the test, showing them,
    /// when it does not within [`WAIT`].
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut g = self.events.lock().unwrap();
        while !pred(&g) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}: {:?}", *g);
            g = self.cv.wait_timeout(g, left).unwrap().0;
        }
        g.clone()
    }
}

/// A TCP port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
