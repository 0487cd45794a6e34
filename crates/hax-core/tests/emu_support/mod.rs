//! What the tests of hax on the emulator share (hax-sim's and hax-testkit's
//! too, by path): a log of what hax's callbacks saw, waited on with a
//! deadline, free endpoints and a halon configuration.

#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use hax_core::{Fid, FidType, HalonConfig};

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

/// An emulator endpoint on a free port of 127.0.0.1.
pub fn free_endpoint() -> String {
    format!("inet:tcp:127.0.0.1@{}", free_port())
}

/// hax's configuration at `endpoint`: process `r:1:3`, HA service `s:1:4`,
/// RM service `s:1:5`; a stop waits 2 s at most for peers to disconnect.
pub fn halon_config(endpoint: &str) -> HalonConfig {
    HalonConfig {
        endpoint: endpoint.to_owned(),
        process_fid: Fid::typed(FidType::Process, 1, 3),
        ha_service_fid: Fid::typed(FidType::Service, 1, 4),
        rm_service_fid: Fid::typed(FidType::Service, 1, 5),
        debug_options: "emu-stop-timeout-ms=2000".into(),
        receive_buffers: 0,
        node_uuid: None,
    }
}
