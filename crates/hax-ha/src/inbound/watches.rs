//! The updates Consul's watches POST to hax, each to its handler: BQ
//! deliveries wake the consumer ([`crate::inbound::bq`]); service health
//! and process state updates become recorded failures and broadcasts
//! ([`crate::inbound::failures`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hax_consul::server::{UpdateData, WatchUpdate};
use hax_core::FidType;
use tokio::sync::mpsc;

use crate::inbound::bq::{BqInbox, BqTrigger};
use crate::inbound::failures::{commit_process_failure, plan_process_failure, updates_from_watch};
use crate::metrics::Metrics;
use crate::model::broadcast::{Broadcast, BroadcastOptions};
use crate::model::{HaUpdate, ObjHealth};
use crate::view::{ClusterState, ClusterView};
use hax_consul::writer::KvWriter;

/// How long a watch update reporting a failure waits for the cluster view to
/// show it.
const VIEW_CATCH_UP: Duration = Duration::from_secs(2);

/// Where watch updates go.
#[derive(Debug)]
pub struct WatchHandlers<B> {
    /// The BQ consumer's inbox.
    pub bq: Arc<BqInbox>,
    /// The cluster view, which failures are planned from.
    pub view: ClusterView,
    /// Where failures are recorded.
    pub writer: KvWriter,
    /// Who broadcasts what failures imply.
    pub broadcaster: Arc<B>,
    /// Counts the updates.
    pub metrics: Arc<Metrics>,
}

impl<B: Broadcast> WatchHandlers<B> {
    /// Handles the updates of `updates` in order until its senders are gone.
    pub async fn run(self, mut updates: mpsc::Receiver<WatchUpdate>) {
        while let Some(u) = updates.recv().await {
            self.metrics.watch_updates.fetch_add(1, Ordering::Relaxed);
            match u.data {
                UpdateData::BroadcastQueue(entries) => {
                    self.bq.deliver(BqTrigger::Entries(entries));
                }
                UpdateData::Service(_)
                | UpdateData::Checks(_)
                | UpdateData::ProcessState { .. } => {
                    self.on_health(&u).await;
                }
                UpdateData::Key(_) | UpdateData::KeyPrefix(_) => {}
            }
        }
    }

    async fn on_health(&self, u: &WatchUpdate) {
        let updates = updates_from_watch(u);
        if updates.is_empty() {
            return;
        }
        // The view follows Consul with its own queries and may not show yet
        // the failure this update reports: wait (bounded) until it does, as
        // the original asked Consul.
        let state = self
            .view
            .wait_until(VIEW_CATCH_UP, |st| view_shows_failures(st, &updates))
            .await
            .unwrap_or_else(|_| self.view.snapshot());
        let plan = plan_process_failure(&state, &updates);
        if let Err(e) = commit_process_failure(&plan, &self.writer, &self.view).await {
            tracing::warn!(error = %e, "recording process failures failed");
        }
        if plan.broadcast.is_empty() {
            return;
        }
        if let Err(e) = self
            .broadcaster
            .broadcast(plan.broadcast, BroadcastOptions::default())
            .await
        {
            tracing::warn!(error = %e, "broadcast of a health change failed");
        }
    }
}

/// Whether `st` shows every process failure `updates` report (processes the
/// configuration does not know excepted).
fn view_shows_failures(st: &ClusterState, updates: &[HaUpdate]) -> bool {
    let down = |h: ObjHealth| matches!(h, ObjHealth::Offline | ObjHealth::Failed);
    updates
        .iter()
        .filter(|u| u.fid.is(FidType::Process) && down(u.health))
        .all(|u| {
            st.node_name_of_process(u.fid)
                .is_none_or(|node| down(st.service_health(node, u.fid.key)))
        })
}
