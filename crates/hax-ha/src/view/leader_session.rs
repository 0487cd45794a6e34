//! The `leader` key as the view follows it: its value (the RC leader's node
//! name, [`parse_leader`]) and the node of the session holding its lock,
//! which is the principal RM's node of the entrypoint configuration. The
//! original hax asks the leader's session for its node the same way; the
//! value is not used for it, since whoever holds the lock may have written
//! anything there.

use std::sync::Arc;
use std::time::Duration;

use hax_consul::watch::Watcher;
use hax_consul::{ConsulClient, KvPair};
use tokio_util::sync::CancellationToken;

use super::entrypoint::strip_node_suffix;
use super::sources::{parse_leader, PART_LEADER};
use super::ViewInner;

/// How long to wait before asking again for the node of the leader's
/// session after Consul did not answer.
const RETRY: Duration = Duration::from_secs(1);

/// The nodes of the sessions holding `leader`, asked of Consul once per
/// session: a session never moves to another node.
#[derive(Debug, Default)]
struct SessionNodes {
    /// The session last asked about, and its node (none: the session is
    /// gone).
    known: Option<(String, Option<String>)>,
    /// Consecutive reads that failed.
    failures: u32,
}

impl SessionNodes {
    /// The node of the session holding `pair`'s lock: `Some(None)` when no
    /// session holds it (or the session is gone), `None` when Consul could
    /// not be asked, or `cancel` came first.
    async fn node_of(
        &mut self,
        client: &ConsulClient,
        pair: Option<&KvPair>,
        cancel: &CancellationToken,
    ) -> Option<Option<String>> {
        let Some(id) = pair.and_then(|p| p.session.as_deref()) else {
            self.failures = 0;
            return Some(None);
        };
        if let Some((known, node)) = &self.known {
            if known == id {
                self.failures = 0;
                return Some(node.clone());
            }
        }
        let asked = tokio::select! {
            () = cancel.cancelled() => return None,
            r = client.session_info(id) => r,
        };
        match asked {
            Ok(info) => {
                let node = info.value.map(|s| strip_node_suffix(&s.node).to_owned());
                self.known = Some((id.to_owned(), node.clone()));
                self.failures = 0;
                Some(node)
            }
            Err(e) => {
                if self.failures == 0 {
                    tracing::warn!(error = %e, "cannot read the leader session; asking again");
                } else {
                    tracing::debug!(error = %e, failures = self.failures, "cannot read the leader session");
                }
                self.failures += 1;
                None
            }
        }
    }
}

/// Feeds the snapshots of the `leader` watcher into the view, from a task
/// that owns the watcher and ends with it (or at `cancel`). While Consul
/// does not say whose the session is, the leader has no node, as before any
/// session held the lock, and the question is asked again every [`RETRY`].
pub(super) fn follow(
    tasks: &tokio_util::task::TaskTracker,
    inner: Arc<ViewInner>,
    client: ConsulClient,
    watcher: Watcher<Option<KvPair>>,
    cancel: CancellationToken,
) {
    tasks.spawn(async move {
        let mut rx = watcher.subscribe();
        let mut last: Option<Arc<Option<KvPair>>> = None;
        let mut nodes = SessionNodes::default();
        loop {
            let snap = rx.borrow_and_update().clone();
            let fresh = !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &snap.value));
            if snap.loaded && (fresh || nodes.failures > 0) {
                let pair = snap.value.as_ref().as_ref();
                let node = nodes.node_of(&client, pair, &cancel).await;
                if cancel.is_cancelled() {
                    break;
                }
                // A retry that failed again changes nothing.
                if fresh || node.is_some() {
                    let leader = parse_leader(pair);
                    inner.update(|s| {
                        s.leader = leader;
                        s.leader_session_node = node.flatten();
                        s.missing.remove(PART_LEADER);
                    });
                }
                last = Some(Arc::clone(&snap.value));
            }
            let changed = if nodes.failures > 0 {
                tokio::select! {
                    r = rx.changed() => r,
                    () = tokio::time::sleep(RETRY) => Ok(()),
                }
            } else {
                rx.changed().await
            };
            if changed.is_err() {
                break;
            }
        }
        drop(watcher);
        tracing::debug!(part = PART_LEADER, "view source stopped");
    });
}
