//! Broadcast planning, a pure function of a [`ClusterState`], the updates and
//! the [`BroadcastOptions`]: the notes Motr processes get (with the services,
//! drives, controllers, nodes and enclosures they imply), the `m0conf/` state
//! writes and the links to send to ([`BroadcastPlan`]).

use std::collections::HashMap;

use hax_consul::schema::{
    ConfKey, ConfObject, ConfState, ConfValue, NcState, ObjState, SchemaError,
};
use hax_consul::txn::MAX_TXN_OPS;
use hax_consul::TxnOp;
use hax_core::{Fid, FidType, HaNote, HaState, LinkId, LinkInfo, NOTES_MAX};

use crate::model::broadcast::BroadcastOptions;
use crate::model::vocab::{base_fid, fid_text, nc_note_state, sdev_note_state};
use crate::model::{HaUpdate, ObjHealth};
use crate::view::ClusterState;

/// Sdev states a process-driven update never overwrites: a device failure is
/// only cleared by an explicit device update.
pub const PROTECTED_SDEV_STATES: &[ConfState] = &[
    ConfState::Word(ObjState::Failed),
    ConfState::Word(ObjState::Repairing),
    ConfState::Word(ObjState::Repaired),
    ConfState::Word(ObjState::Rebalancing),
];

/// Process states under which a node's `ios` process counts as down.
pub(crate) const DOWN_PROCESS_STATES: &[ObjState] =
    &[ObjState::Stopped, ObjState::Failed, ObjState::Offline];

/// One `state` write of a configuration object.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfWrite {
    /// The key.
    pub key: ConfKey,
    /// The new state.
    pub state: ConfState,
    /// The whole new value (other fields as read).
    pub object: ConfObject,
    /// Modify index of the value the plan read (the write is a check-and-set).
    pub modify_index: u64,
    /// Current states that must not be replaced.
    pub keep: &'static [ConfState],
}

/// Which links a broadcast goes to (among the active ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSelection {
    /// Only hax's own link (`broadcast_hax_only`).
    SelfOnly,
    /// Every link but those made by these processes (`proc_skip_list`).
    AllExcept(Vec<Fid>),
    /// As [`LinkSelection::AllExcept`], hax's own link left out too
    /// (`skip_self_link`).
    PeersExcept(Vec<Fid>),
}

impl LinkSelection {
    /// The links of `links` that are `active` and selected.
    pub fn select(&self, links: &[LinkInfo], active: &[LinkId]) -> Vec<LinkId> {
        links
            .iter()
            .filter(|l| active.contains(&l.id))
            .filter(|l| match self {
                LinkSelection::SelfOnly => l.is_self,
                LinkSelection::AllExcept(skip) => !skip.contains(&l.process_fid),
                LinkSelection::PeersExcept(skip) => !l.is_self && !skip.contains(&l.process_fid),
            })
            .map(|l| l.id)
            .collect()
    }
}

/// What a broadcast does.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastPlan {
    /// The notes, in order (an object's repeated identical note left out).
    pub notes: Vec<HaNote>,
    /// The configuration states to write first.
    pub kv_writes: Vec<ConfWrite>,
    /// Where the notes go.
    pub targets: LinkSelection,
}

impl BroadcastPlan {
    /// The notes as sent: NVEC SETs of at most [`NOTES_MAX`] notes.
    pub fn chunks(&self) -> std::slice::Chunks<'_, HaNote> {
        self.notes.chunks(NOTES_MAX)
    }
}

/// The lowercase word a process health is recorded as; `None` for the
/// device-only healths (REPAIR, REPAIRED, REBALANCE), which are not written.
pub fn process_word(h: ObjHealth) -> Option<ObjState> {
    Some(match h {
        ObjHealth::Ok => ObjState::Online,
        ObjHealth::Failed => ObjState::Failed,
        ObjHealth::Offline => ObjState::Offline,
        ObjHealth::Unknown => ObjState::Unknown,
        ObjHealth::Stopped => ObjState::Stopped,
        ObjHealth::Recovering => ObjState::DtmRecovering,
        ObjHealth::Repair | ObjHealth::Repaired | ObjHealth::Rebalance => return None,
    })
}

/// The lowercase word a device (sdev) health is recorded as. UNKNOWN and
/// STOPPED are `offline` (the original had no word for STOPPED).
pub fn device_word(h: ObjHealth) -> ObjState {
    match h {
        ObjHealth::Ok => ObjState::Online,
        ObjHealth::Unknown | ObjHealth::Offline | ObjHealth::Stopped => ObjState::Offline,
        ObjHealth::Recovering => ObjState::DtmRecovering,
        ObjHealth::Failed => ObjState::Failed,
        ObjHealth::Repair => ObjState::Repairing,
        ObjHealth::Repaired => ObjState::Repaired,
        ObjHealth::Rebalance => ObjState::Rebalancing,
    }
}

/// The `M0_NC_*` state nodes, enclosures and controllers are recorded with:
/// that of the health's note state (UNKNOWN, OFFLINE, STOPPED → TRANSIENT).
pub fn nc_state(h: ObjHealth) -> NcState {
    match h.note_state() {
        HaState::Unknown | HaState::Transient => NcState::Transient,
        HaState::Online => NcState::Online,
        HaState::Failed => NcState::Failed,
        HaState::Repair => NcState::Repair,
        HaState::Repaired => NcState::Repaired,
        HaState::Rebalance => NcState::Rebalance,
        HaState::DtmRecovering => NcState::DtmRecovering,
    }
}

pub(crate) fn is_down(h: ObjHealth) -> bool {
    matches!(h, ObjHealth::Offline | ObjHealth::Failed)
}

/// Builds plans, reading its own writes: a later rule sees the states an
/// earlier one wrote (as the original, which re-read the KV store), and a
/// later broadcast of a group those of the earlier ones.
pub(crate) struct Planner<'a> {
    st: &'a ClusterState,
    notes: Vec<HaNote>,
    last: HashMap<Fid, HaState>,
    /// The writes of every broadcast planned so far, one per key.
    writes: Vec<ConfWrite>,
    pending: HashMap<ConfKey, usize>,
    /// The writes the broadcast being planned made (indexes in `writes`).
    touched: Vec<usize>,
}

impl<'a> Planner<'a> {
    fn new(st: &'a ClusterState) -> Self {
        Planner {
            st,
            notes: Vec::new(),
            last: HashMap::new(),
            writes: Vec::new(),
            pending: HashMap::new(),
            touched: Vec::new(),
        }
    }

    /// Plans one broadcast (see [`plan_broadcast`]) on the state with the
    /// writes of the broadcasts planned before it.
    fn plan(&mut self, updates: &[HaUpdate], opts: &BroadcastOptions) -> BroadcastPlan {
        self.notes.clear();
        self.last.clear();
        self.touched.clear();
        let st = self.st;
        let hax = base_fid(st.hax_fid());
        for u in updates {
            if u.health == ObjHealth::Unknown {
                continue;
            }
            let note_state = u.health.note_state();
            self.note(u.fid, note_state);
            match u.fid.kind() {
                Some(FidType::Process) => {
                    let tree =
                        !opts.broadcast_hax_only && !st.is_mkfs(u.fid) && base_fid(u.fid) != hax;
                    if tree {
                        self.process_tree(u.fid, u.health, note_state, opts);
                    }
                }
                Some(FidType::Drive) if opts.update_kv => self.drive_state(u.fid, u.health),
                Some(FidType::Node) => self.node_tree(u.fid, u.health, opts.update_kv),
                _ => {}
            }
        }
        BroadcastPlan {
            notes: std::mem::take(&mut self.notes),
            kv_writes: self
                .touched
                .iter()
                .map(|&i| self.writes[i].clone())
                .collect(),
            targets: if opts.broadcast_hax_only {
                LinkSelection::SelfOnly
            } else if opts.skip_self_link {
                LinkSelection::PeersExcept(opts.proc_skip_list.clone())
            } else {
                LinkSelection::AllExcept(opts.proc_skip_list.clone())
            },
        }
    }

    fn touch(&mut self, i: usize) {
        if !self.touched.contains(&i) {
            self.touched.push(i);
        }
    }

    /// Adds a note, unless the object's last note already says the same
    /// (a node reached from several processes); a change in between is kept.
    fn note(&mut self, fid: Fid, state: HaState) {
        if self.last.insert(fid, state) != Some(state) {
            self.notes.push(HaNote::new(fid, state));
        }
    }

    fn object(&self, key: &ConfKey) -> Option<&ConfObject> {
        match self.pending.get(key) {
            Some(i) => Some(&self.writes[*i].object),
            None => self.st.conf_object(key),
        }
    }

    fn state_of(&self, key: &ConfKey) -> Option<&str> {
        self.object(key)?.state.as_deref()
    }

    /// Plans a state write of an existing key, unless its current state is
    /// already `state` or one of `keep`.
    fn write(&mut self, key: &ConfKey, state: ConfState, keep: &'static [ConfState]) {
        let Some(entry) = self.st.conf_entry(key) else {
            return;
        };
        if !matches!(entry.value, ConfValue::Object(_)) {
            return;
        }
        let Some(current) = self.object(key) else {
            return;
        };
        let now = current.state.as_deref();
        if now.is_some_and(|s| keep.iter().any(|k| k.as_str() == s)) || now == Some(state.as_str())
        {
            return;
        }
        let mut object = current.clone();
        object.state = Some(state.as_str().to_owned());
        match self.pending.get(key) {
            Some(&i) => {
                let w = &mut self.writes[i];
                w.state = state;
                w.object = object;
                w.keep = keep;
                self.touch(i);
            }
            None => {
                let i = self.writes.len();
                self.pending.insert(key.clone(), i);
                self.writes.push(ConfWrite {
                    key: key.clone(),
                    state,
                    object,
                    modify_index: entry.modify_index,
                    keep,
                });
                self.touch(i);
            }
        }
    }

    fn write_all(&mut self, keys: &[ConfKey], state: ConfState, keep: &'static [ConfState]) {
        for k in keys {
            self.write(k, state, keep);
        }
    }

    /// A process, its services, drives, controller, node and enclosure.
    fn process_tree(
        &mut self,
        fid: Fid,
        health: ObjHealth,
        state: HaState,
        opts: &BroadcastOptions,
    ) {
        let st = self.st;
        if opts.update_kv {
            match process_word(health) {
                Some(w) => self.write_all(st.process_keys(fid), ConfState::Word(w), &[]),
                None => {
                    tracing::warn!(%fid, ?health, "no process state for this health, not recorded")
                }
            }
        }
        let services = st.services_of_process(fid);
        for (_, svc) in &services {
            self.note(st.full_fid(*svc), state);
        }
        if opts.notify_devices {
            let svcs: Vec<Fid> = services.iter().map(|(_, s)| *s).collect();
            self.disks(fid, &svcs, state, opts.update_kv);
        }
        self.node_by_process(fid, state, opts.update_kv);
    }

    /// The drives of a process's sdevs. A FAILED process makes its disks
    /// OFFLINE, not FAILED: a process failure is not a device failure (the
    /// FAILED note only makes Motr drop the process's links).
    fn disks(&mut self, process: Fid, services: &[Fid], state: HaState, update_kv: bool) {
        let st = self.st;
        let health = if state == HaState::Failed {
            ObjHealth::Offline
        } else {
            ObjHealth::from_note_state(state)
        };
        let mut drives = Vec::new();
        for svc in services {
            for sdev in st.sdevs_of(base_fid(process), *svc) {
                match st.drive_of_sdev(sdev) {
                    Some(d) => drives.push(d),
                    // The original broadcast the drive 0:0 here.
                    None => tracing::warn!(%sdev, %process, "sdev without a drive, not broadcast"),
                }
            }
        }
        if update_kv {
            for d in &drives {
                if let Some(sdev) = st.sdev_of_drive(*d) {
                    let word = ConfState::Word(device_word(health));
                    self.write_all(st.sdev_keys(sdev), word, PROTECTED_SDEV_STATES);
                }
            }
        }
        for d in drives {
            // The note says what the sdev says now, written or kept.
            let state = self.drive_note_state(d);
            self.note(d, state);
        }
    }

    fn drive_note_state(&self, drive: Fid) -> HaState {
        let key = self
            .st
            .sdev_of_drive(drive)
            .and_then(|s| self.st.sdev_keys(s).first());
        match key {
            Some(k) => sdev_note_state(self.state_of(k)),
            None => HaState::Online,
        }
    }

    /// Controller, node and enclosure of a process (the original's
    /// `notify_node_status_by_process`).
    fn node_by_process(&mut self, process: Fid, state: HaState, update_kv: bool) {
        let st = self.st;
        let health = ObjHealth::from_note_state(state);
        let Some(node_name) = st.node_name_of_process(process) else {
            tracing::warn!(%process, "process of no known node: no node or controller notes");
            return;
        };
        if let Some(ctrl) = st.ctrl_of_process(base_fid(process)) {
            if update_kv {
                self.write_all(st.ctrl_keys(ctrl), ConfState::Nc(nc_state(health)), &[]);
            }
            self.note(ctrl, state);
        }
        let Some(node) = st.node_fid_by_name(node_name) else {
            tracing::warn!(
                node = node_name,
                "node without a fid: no node or enclosure notes"
            );
            return;
        };
        // A failed process fails its node only once every ios process of the
        // node is down; anything else is the node's state too.
        if !is_down(health) || self.all_ios_down(node) {
            self.node_and_enclosure(node, health, update_kv);
        }
    }

    fn all_ios_down(&self, node: Fid) -> bool {
        let node_text = fid_text(node);
        self.st.ios_processes_of_node(node).into_iter().all(|p| {
            self.st
                .process_keys(p)
                .iter()
                .filter(|k| matches!(k, ConfKey::Process { node: n, .. } if *n == node_text))
                .all(|k| {
                    self.state_of(k)
                        .and_then(|s| s.parse::<ObjState>().ok())
                        .is_some_and(|s| DOWN_PROCESS_STATES.contains(&s))
                })
        })
    }

    fn node_and_enclosure(&mut self, node: Fid, health: ObjHealth, update_kv: bool) {
        let st = self.st;
        let nc = ConfState::Nc(nc_state(health));
        // As the original: the node's state is written even without
        // `update_kv` (broadcasts of remote process states write it too).
        self.write(
            &ConfKey::Node {
                node: fid_text(node),
            },
            nc,
            &[],
        );
        self.note(node, health.note_state());
        if let Some(encl) = st.encl_of_node(node) {
            if update_kv {
                self.write_all(st.encl_keys(encl), nc, &[]);
            }
            self.note(encl, health.note_state());
        }
    }

    /// An update of a node: its enclosure, and its controllers (written as
    /// the node when it is down; their notes say their recorded state).
    fn node_tree(&mut self, node: Fid, health: ObjHealth, update_kv: bool) {
        let st = self.st;
        let nc = ConfState::Nc(nc_state(health));
        if update_kv {
            self.write(
                &ConfKey::Node {
                    node: fid_text(node),
                },
                nc,
                &[],
            );
        }
        let Some(encl) = st.encl_of_node(node) else {
            return;
        };
        let ctrls = st.ctrls_of_encl(encl);
        if update_kv {
            self.write_all(st.encl_keys(encl), nc, &[]);
            if is_down(health) {
                for c in &ctrls {
                    self.write_all(st.ctrl_keys(*c), nc, &[]);
                }
            }
        }
        self.note(encl, health.note_state());
        for c in ctrls {
            let state = match st.ctrl_keys(c).first() {
                Some(k) => nc_note_state(self.state_of(k)),
                None => HaState::Online,
            };
            self.note(c, state);
        }
    }

    /// An update of a drive: its sdev's state, failures included.
    fn drive_state(&mut self, drive: Fid, health: ObjHealth) {
        let st = self.st;
        match st.sdev_of_drive(drive) {
            Some(sdev) => {
                let word = ConfState::Word(device_word(health));
                self.write_all(st.sdev_keys(sdev), word, &[]);
            }
            None => tracing::warn!(%drive, "drive without an sdev, state not recorded"),
        }
    }
}

/// Plans a broadcast of `updates` (the original's `broadcast_ha_states`):
///
/// * UNKNOWN updates are skipped; each other update is a note with its
///   health's note state;
/// * a process (not hax, not an m0mkfs run, unless `broadcast_hax_only`):
///   its `m0conf` state (with `update_kv`), a note per service with the same
///   state, with `notify_devices` its drives ([`PROTECTED_SDEV_STATES`] are
///   never overwritten; the note gives the sdev's resulting state), its
///   controller, and its node and enclosure (for a failure only when every
///   `ios` process of the node is down);
/// * a drive: its sdev's state is written (with `update_kv`);
/// * a node: its state (with `update_kv`), its enclosure's note (and state),
///   its controllers' notes (and states when the node is down);
/// * other objects: the note only.
pub fn plan_broadcast(
    state: &ClusterState,
    updates: &[HaUpdate],
    opts: &BroadcastOptions,
) -> BroadcastPlan {
    Planner::new(state).plan(updates, opts)
}

/// Plans broadcasts done together, in order: each is planned as
/// [`plan_broadcast`] would on the state with the earlier ones' writes.
/// Returns each one's plan (with the writes it made) and every write of the
/// group, one per key with its final value.
pub fn plan_group(
    state: &ClusterState,
    requests: &[(&[HaUpdate], &BroadcastOptions)],
) -> (Vec<BroadcastPlan>, Vec<ConfWrite>) {
    let mut p = Planner::new(state);
    let plans = requests
        .iter()
        .map(|(updates, opts)| p.plan(updates, opts))
        .collect();
    (plans, p.writes)
}

/// The check-and-set transactions of configuration writes, at most
/// [`MAX_TXN_OPS`] operations each.
pub fn txn_batches(writes: &[ConfWrite]) -> Result<Vec<Vec<TxnOp>>, SchemaError> {
    writes
        .chunks(MAX_TXN_OPS)
        .map(|batch| batch.iter().map(cas_op).collect())
        .collect()
}

pub(crate) fn cas_op(w: &ConfWrite) -> Result<TxnOp, SchemaError> {
    let key = w.key.to_key();
    let body = hax_consul::pyjson::to_string(&w.object).map_err(|e| SchemaError::BadValue {
        key: key.clone(),
        reason: format!("cannot encode: {e}"),
    })?;
    Ok(TxnOp::cas(key, body, w.modify_index))
}
