//! The RC leader election as hare runs it: on every node, a watch of the
//! `leader` key calls `elect-rc-leader`, which, while no session holds the
//! key, creates a session on its own node's agent (tied to that node's
//! `serfHealth`, released on invalidation, with a lock-delay) and tries to
//! acquire `leader` with the node name as value. When a node's agent dies,
//! its session is invalidated, the lock released, and after the lock-delay
//! one of the other nodes' electors takes it.

use std::time::Duration;

use hax_consul::schema::keys;
use hax_consul::session::{SessionBehavior, SessionRequest};
use hax_consul::{ConsulClient, QueryOptions};
use tokio::task::JoinHandle;

/// One elector per node, each through its node's agent; aborted when
/// dropped.
#[derive(Debug, Default)]
pub struct Elector {
    tasks: Vec<JoinHandle<()>>,
}

impl Elector {
    /// Starts the elector of `node`, talking to `client` (that node's agent).
    pub fn add(&mut self, node: String, client: ConsulClient, lock_delay: Duration) {
        self.tasks
            .push(tokio::spawn(elect_loop(node, client, lock_delay)));
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Tries to make `node` the leader while nobody holds `leader`; until
/// aborted. Errors (the agent killed or frozen) only delay the next try.
async fn elect_loop(node: String, client: ConsulClient, lock_delay: Duration) {
    let pause = Duration::from_millis(250);
    let mut index = 0;
    loop {
        let got = client
            .kv_get_with(
                keys::LEADER,
                &QueryOptions::blocking(index, Duration::from_secs(2)),
            )
            .await;
        let held = match got {
            Ok(answer) => {
                index = answer.index;
                answer
                    .value
                    .and_then(|p| p.session)
                    .is_some_and(|s| !s.is_empty())
            }
            Err(_) => {
                index = 0;
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if held {
            continue;
        }
        if try_acquire(&node, &client, lock_delay).await {
            tracing::info!(%node, "RC leader elected");
        } else {
            // Within the lock-delay, or another node was quicker: no change
            // of the key tells when to try again, so poll.
            index = 0;
            tokio::time::sleep(pause).await;
        }
    }
}

/// One `elect-rc-leader`: a session of this node's agent acquiring `leader`.
async fn try_acquire(node: &str, client: &ConsulClient, lock_delay: Duration) -> bool {
    let Ok(session) = client
        .session_create(&SessionRequest {
            name: Some("leader".into()),
            lock_delay: Some(lock_delay),
            behavior: SessionBehavior::Release,
            ..Default::default()
        })
        .await
    else {
        return false;
    };
    match client
        .kv_acquire(keys::LEADER, node.as_bytes(), &session)
        .await
    {
        Ok(true) => true,
        _ => {
            let _ = client.session_destroy(&session).await;
            false
        }
    }
}
