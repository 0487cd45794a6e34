//! Failures that Consul reports: a service-health watch payload as the HA
//! updates it implies ([`updates_from_watch`], [`updates_from_service_entries`]),
//! and the original's `update_process_failure`: [`plan_process_failure`]
//! turns reported failures into the ones this node is responsible for, and
//! [`commit_process_failure`] records them as `STOPPED` in `processes/<fid>`
//! and tells the other nodes through the broadcast queue.
//!
//! Planning is a pure function of a [`ClusterState`]; its effects come back as
//! data ([`ProcessFailurePlan`]) so that the daemon decides when they happen.
//! The original serialises this per process with in-process locks; in hax one
//! task handles the watch updates in order ([`crate::inbound::watches`]), so nothing here locks.

use hax_consul::catalog::{CheckStatus, ServiceEntry};
use hax_consul::schema::{ProcessState, ProcessStatus, ProcessType, QueueKind};
use hax_consul::server::{UpdateData, WatchUpdate};
use hax_core::{Fid, FidType};

use crate::model::facts::ClusterFacts;
use crate::model::records::{process_state_message, process_status_write};
use crate::model::vocab::process_fid;
use crate::model::{HaUpdate, ObjHealth};
use crate::view::health::NodeChecks;
use crate::view::ClusterState;
use hax_consul::writer::{Ack, KvWriter, WriteError, WriteOp};

/// The HA updates a `service` watch payload reports (the original's
/// `to_ha_states`): for each entry the status starts OK and turns OFFLINE at
/// the first check that is not passing, for the rest of that entry; every
/// check that names a service instance reports that instance's process
/// (`0x7200000000000001:<ServiceID>`) with the status so far. Service ids
/// that are not decimal fid keys are skipped with a warning (the original
/// failed the whole request).
pub fn updates_from_service_entries(entries: &[ServiceEntry]) -> Vec<HaUpdate> {
    let mut out = Vec::new();
    for e in entries {
        let mut health = ObjHealth::Ok;
        for c in &e.checks {
            if c.status != CheckStatus::Passing {
                health = ObjHealth::Offline;
            }
            if c.service_id.is_empty() {
                continue;
            }
            match c.service_id.parse::<u64>() {
                Ok(key) => out.push(HaUpdate::new(process_fid(key), health)),
                Err(_) => tracing::warn!(
                    node = %e.node.node, service_id = %c.service_id,
                    "service id is not a fid key, check ignored"
                ),
            }
        }
    }
    out
}

/// The HA updates of a watch update:
/// * `service` watches: [`updates_from_service_entries`];
/// * `checks` watches: each check of a service instance reports its process,
///   OK when passing, else OFFLINE;
/// * the legacy `processes/<fid>` key watch (the original's
///   `/watcher/processes`): a non-m0mkfs process STARTED → RECOVERING,
///   DTM_RECOVERED → OK, STOPPED → OFFLINE; other states nothing;
/// * other data: nothing.
pub fn updates_from_watch(update: &WatchUpdate) -> Vec<HaUpdate> {
    match &update.data {
        UpdateData::Service(entries) => updates_from_service_entries(entries),
        UpdateData::Checks(checks) => checks
            .iter()
            .filter(|c| !c.service_id.is_empty())
            .filter_map(|c| {
                let key = c.service_id.parse::<u64>().ok()?;
                let health = if c.status == CheckStatus::Passing {
                    ObjHealth::Ok
                } else {
                    ObjHealth::Offline
                };
                Some(HaUpdate::new(process_fid(key), health))
            })
            .collect(),
        UpdateData::ProcessState {
            fid,
            status: Some(status),
        } if status.kind != ProcessType::M0mkfs => {
            let health = match status.state {
                ProcessState::Started => ObjHealth::Recovering,
                ProcessState::DtmRecovered => ObjHealth::Ok,
                ProcessState::Stopped => ObjHealth::Offline,
                ProcessState::Starting | ProcessState::Stopping => return Vec::new(),
            };
            vec![HaUpdate::new(Fid::new(fid.container(), fid.key()), health)]
        }
        _ => Vec::new(),
    }
}

/// A process this node declares stopped after a Consul-detected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoppedProcess {
    /// The process, as reported.
    pub fid: Fid,
    /// What `processes/<fid>` becomes: STOPPED, with the recorded type.
    pub status: ProcessStatus,
}

/// What [`plan_process_failure`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFailurePlan {
    /// The updates to broadcast (with KV updates): the non-process updates as
    /// given, and the processes of `stopped` with their current health.
    pub broadcast: Vec<HaUpdate>,
    /// Processes to record as STOPPED in `processes/<fid>` and to announce in
    /// the broadcast queue as `PROCESS-STATE-UPDATE`.
    pub stopped: Vec<StoppedProcess>,
}

impl ProcessFailurePlan {
    /// The writes that record and announce `stopped`: every
    /// `processes/<fid>` first, then one `PROCESS-STATE-UPDATE` per process
    /// (the original writes the KV first, so that a node learning of the
    /// failure from the queue finds it recorded).
    pub fn write_ops(&self) -> Result<Vec<WriteOp>, WriteError> {
        let mut ops = self
            .stopped
            .iter()
            .map(|s| process_status_write(s.fid, s.status))
            .collect::<Result<Vec<_>, _>>()?;
        ops.extend(self.stopped.iter().map(|s| {
            WriteOp::publish(QueueKind::Broadcast, process_state_message(s.fid, s.status))
        }));
        Ok(ops)
    }
}

/// The original's `update_process_failure`: which reported process failures
/// this node acts on.
///
/// * Non-process updates pass through; updates of hax itself are dropped
///   (hax's own start and stop are handled by its process events).
/// * For other processes the reported health is ignored and the current one
///   is computed ([`ClusterState::service_health`]); unless it is OFFLINE or
///   FAILED the update is dropped (the happy path is driven by Motr's own
///   process events). Processes with no recorded state or recorded as m0mkfs
///   are dropped too (m0mkfs states are kept by their own node), and so are
///   processes the configuration does not know.
/// * A process of this node, not yet recorded STOPPED: recorded STOPPED,
///   announced, broadcast with its current health.
/// * A process of another node, when this node is the RC leader and the
///   process's node fails its node check (its hax is gone with it): the same.
///   Otherwise its own node's hax handles it.
pub fn plan_process_failure(state: &ClusterState, updates: &[HaUpdate]) -> ProcessFailurePlan {
    let mut plan = ProcessFailurePlan::default();
    let hax = state.hax_fid();
    let rc = state.is_rc();
    for u in updates {
        if !u.fid.is(FidType::Process) {
            plan.broadcast.push(*u);
            continue;
        }
        if u.fid == hax {
            continue;
        }
        let Some(node) = state.node_name_of_process(u.fid) else {
            tracing::warn!(fid = %u.fid, "failure of a process the configuration does not know, ignored");
            continue;
        };
        let current = state.service_health(node, u.fid.key);
        if !matches!(current, ObjHealth::Offline | ObjHealth::Failed) {
            tracing::debug!(fid = %u.fid, reported = ?u.health, ?current, "process is not failed now");
            continue;
        }
        let Some(recorded) = state.process_status(u.fid) else {
            continue;
        };
        if recorded.kind == ProcessType::M0mkfs {
            continue;
        }
        let responsible = if node == state.local_node() {
            true
        } else if rc {
            // A node whose Consul agent still passes has a hax of its own.
            !state
                .node_checks(node)
                .is_some_and(NodeChecks::node_passing)
        } else {
            false
        };
        if !responsible || recorded.state == ProcessState::Stopped {
            continue;
        }
        tracing::info!(fid = %u.fid, %node, health = ?current, "process failure detected by Consul");
        plan.stopped.push(StoppedProcess {
            fid: u.fid,
            status: ProcessStatus {
                state: ProcessState::Stopped,
                kind: recorded.kind,
            },
        });
        plan.broadcast.push(HaUpdate::new(u.fid, current));
    }
    plan
}

/// Performs the effects of a plan through the daemon's Consul writer:
/// records the stopped processes in `facts` at once (so that answers given
/// from memory reflect them), submits [`ProcessFailurePlan::write_ops`] and
/// waits until they are durable. The writer retries through Consul outages,
/// so an error means the writer refused or stopped.
pub async fn commit_process_failure(
    plan: &ProcessFailurePlan,
    writer: &KvWriter,
    facts: &impl ClusterFacts,
) -> Result<(), WriteError> {
    let ops = plan.write_ops()?;
    for s in &plan.stopped {
        facts.record_process_status(s.fid, s.status);
    }
    let mut waiters = Vec::with_capacity(ops.len());
    for op in ops {
        let (ack, done) = Ack::channel();
        writer.submit(op, Some(ack)).await?;
        waiters.push(done);
    }
    for w in waiters {
        w.await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vocab::fid_text;
    use crate::view::health::tests::{check, entry};
    use crate::view::health::SERF_HEALTH;
    use crate::view::sample::{self, Sample};
    use crate::view::{ClusterView, ViewData};
    use hax_consul::catalog::HealthCheck;

    #[test]
    fn watch_payload_becomes_process_updates() {
        let e = entry(
            "n",
            "12",
            vec![
                check("n", SERF_HEALTH, "passing", ""),
                check("n", "service:12", "passing", "12"),
                check("n", "other", "critical", ""),
                check("n", "service:12b", "passing", "13"),
                check("n", "bad", "passing", "ios-1"),
            ],
        );
        let healthy = entry("m", "6", vec![check("m", "service:6", "passing", "6")]);
        let got = updates_from_service_entries(&[e, healthy]);
        assert_eq!(
            got,
            vec![
                HaUpdate::new(process_fid(12), ObjHealth::Ok),
                // OFFLINE sticks once a check failed, even on passing checks.
                HaUpdate::new(process_fid(13), ObjHealth::Offline),
                HaUpdate::new(process_fid(6), ObjHealth::Ok),
            ]
        );
        assert_eq!(
            process_fid(12).to_string(),
            "0x7200000000000001:0xc",
            "the fid the original builds"
        );
        assert!(updates_from_service_entries(&[]).is_empty());
        let w = |data| WatchUpdate {
            label: "w".into(),
            origin: hax_consul::server::UpdateOrigin::Watch,
            data,
        };
        assert!(updates_from_watch(&w(UpdateData::KeyPrefix(vec![]))).is_empty());
        let checks: Vec<HealthCheck> = serde_json::from_value(serde_json::json!([
            check("n", SERF_HEALTH, "critical", ""),
            check("n", "service:12", "passing", "12"),
            check("n", "service:13", "warning", "13"),
        ]))
        .expect("checks");
        assert_eq!(
            updates_from_watch(&w(UpdateData::Checks(checks))),
            vec![
                HaUpdate::new(process_fid(12), ObjHealth::Ok),
                HaUpdate::new(process_fid(13), ObjHealth::Offline),
            ]
        );
        let fid = fid_text(process_fid(12));
        let recorded = |state, kind| {
            w(UpdateData::ProcessState {
                fid,
                status: Some(ProcessStatus { state, kind }),
            })
        };
        let m0d = ProcessType::M0d;
        for (state, want) in [
            (ProcessState::Started, Some(ObjHealth::Recovering)),
            (ProcessState::DtmRecovered, Some(ObjHealth::Ok)),
            (ProcessState::Stopped, Some(ObjHealth::Offline)),
            (ProcessState::Starting, None),
            (ProcessState::Stopping, None),
        ] {
            let want: Vec<HaUpdate> = want
                .map(|h| HaUpdate::new(process_fid(12), h))
                .into_iter()
                .collect();
            assert_eq!(updates_from_watch(&recorded(state, m0d)), want, "{state:?}");
        }
        assert!(
            updates_from_watch(&recorded(ProcessState::Stopped, ProcessType::M0mkfs)).is_empty()
        );
        assert!(updates_from_watch(&w(UpdateData::ProcessState { fid, status: None })).is_empty());
    }

    /// The sample with the ios of node 1 critical in Consul, node 2 dead or
    /// alive, and this node (node 1) the RC leader or not.
    fn failing(node2_alive: bool, rc: bool) -> ViewData {
        let mut d = sample::view_data();
        d.health = sample::health_entries(&[(Sample::IOS1.key, "critical")], node2_alive);
        d.leader = rc.then(|| Sample::NODE1_NAME.to_owned());
        d
    }

    #[test]
    fn local_failures_are_recorded_announced_and_broadcast() {
        let st = ClusterView::from_data(failing(true, false)).snapshot();
        let pool = HaUpdate::new(Fid::typed(FidType::Pool, 1, 9), ObjHealth::Failed);
        let updates = [
            HaUpdate::new(Sample::IOS1, ObjHealth::Failed),
            HaUpdate::new(Sample::HAX1, ObjHealth::Offline),
            pool,
            // Healthy now, whatever the report says.
            HaUpdate::new(Sample::CONFD1, ObjHealth::Offline),
        ];
        let plan = plan_process_failure(&st, &updates);
        assert_eq!(
            plan.broadcast,
            vec![
                // Current health, not the reported FAILED.
                HaUpdate::new(Sample::IOS1, ObjHealth::Offline),
                pool,
            ]
        );
        let stopped = ProcessStatus {
            state: ProcessState::Stopped,
            kind: ProcessType::M0d,
        };
        assert_eq!(
            plan.stopped,
            vec![StoppedProcess {
                fid: Sample::IOS1,
                status: stopped
            }]
        );
        let ops = plan.write_ops().expect("ops");
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[0],
            WriteOp::put(
                "processes/0x7200000000000001:0xc",
                r#"{"state": "M0_CONF_HA_PROCESS_STOPPED", "type": "M0_CONF_HA_PROCESS_M0D"}"#
            )
        );
        match &ops[1] {
            WriteOp::Publish { queue, message } => {
                assert_eq!(*queue, QueueKind::Broadcast);
                assert_eq!(message.message_type, "PROCESS-STATE-UPDATE");
                assert_eq!(
                    message.payload,
                    serde_json::json!({"fid": "0x7200000000000001:0xc",
                        "state": "M0_CONF_HA_PROCESS_STOPPED", "type": "M0_CONF_HA_PROCESS_M0D"})
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn already_stopped_mkfs_and_unrecorded_processes_are_dropped() {
        let mut d = failing(true, false);
        let u = [HaUpdate::new(Sample::IOS1, ObjHealth::Offline)];
        d.processes.insert(
            fid_text(Sample::IOS1),
            ProcessStatus {
                state: ProcessState::Stopped,
                kind: ProcessType::M0d,
            },
        );
        let st = ClusterView::from_data(d.clone()).snapshot();
        assert_eq!(plan_process_failure(&st, &u), ProcessFailurePlan::default());
        d.processes.insert(
            fid_text(Sample::IOS1),
            ProcessStatus {
                state: ProcessState::Started,
                kind: ProcessType::M0mkfs,
            },
        );
        let st = ClusterView::from_data(d.clone()).snapshot();
        assert_eq!(plan_process_failure(&st, &u), ProcessFailurePlan::default());
        d.processes.remove(&fid_text(Sample::IOS1));
        let st = ClusterView::from_data(d).snapshot();
        assert_eq!(plan_process_failure(&st, &u), ProcessFailurePlan::default());
    }

    #[test]
    fn remote_failures_are_the_rc_leaders_once_the_node_is_dead() {
        // The ios of node 2 fails; this node is node 1.
        let u = [HaUpdate::new(Sample::IOS2A, ObjHealth::Failed)];
        let with = |alive: bool, rc: bool| {
            let mut d = failing(alive, rc);
            d.health = sample::health_entries(&[(Sample::IOS2A.key, "critical")], alive);
            plan_process_failure(&ClusterView::from_data(d).snapshot(), &u)
        };
        assert_eq!(with(true, false), ProcessFailurePlan::default(), "not RC");
        assert_eq!(
            with(true, true),
            ProcessFailurePlan::default(),
            "its own hax is alive"
        );
        assert_eq!(with(false, false), ProcessFailurePlan::default(), "not RC");
        let plan = with(false, true);
        assert_eq!(
            plan.broadcast,
            vec![HaUpdate::new(Sample::IOS2A, ObjHealth::Offline)]
        );
        assert_eq!(plan.stopped.len(), 1);
    }
}
