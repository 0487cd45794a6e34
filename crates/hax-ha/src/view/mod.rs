//! [`ClusterView`]: what the daemon knows of the cluster, in memory, so that
//! Motr's questions are answered without a Consul round trip.
//!
//! It holds the configuration tree (`m0conf/`), the recorded process states
//! (`processes/`), the health checks of the Motr services (one
//! service-health watch per service name), the Consul node of each host
//! (`consul/node/`), the RC leader (`leader`, and the node of the session
//! holding it), the confd services (catalog service `confd`), the client
//! service types (`m0_client_types`), and this node's identity. Watchers
//! built on blocking queries keep each part up to date, one per source;
//! every change publishes a new immutable [`ClusterState`], which readers
//! take with [`ClusterView::snapshot`] (a pointer copy under a lock held for
//! nothing else) and query synchronously. The entrypoint configuration is
//! derived from these states ([`ClusterView::entrypoint`]), not followed
//! apart.
//!
//! What hax itself writes (configuration states, process states) is made
//! visible at once with [`ClusterView::record_conf_writes`] and
//! [`ClusterView::record_process_status`]: the write is kept as an overlay
//! until a snapshot at least as new as the write arrives, so that a reader
//! never sees hax's own write undone by a watch answer that predates it.
//!
//! The original hax read `m0conf/nodes` once and never again; here the tree
//! follows the KV store, which gives the same answers on a static
//! configuration and the right ones when hare's tools change it.

mod conf_reader;
pub mod entrypoint;
pub mod health;
pub mod identity;
mod leader_session;
mod reported;
#[cfg(test)]
pub(crate) mod sample;
mod sources;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use hax_consul::catalog::{CatalogService, ServiceEntry};
use hax_consul::schema::{
    keys, ConfEntry, ConfKey, ConfObject, ConfTree, ConfValue, FidText, ProcessStatus,
};
use hax_consul::watch::{
    CatalogServiceSource, ServiceHealthSource, Snapshot, WatchConfig, Watcher,
};
use hax_consul::ConsulClient;
use hax_core::{Fid, HaState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::entrypoint::EntrypointPublisher;
use self::health::NodeHealthMap;
use crate::model::facts::EntrypointSnapshot;
use crate::model::vocab::fid_text;

use self::sources::*;
pub use self::state::ClusterState;

/// The Consul services whose health checks the view follows by default: the
/// ones the original's Consul watches point at hax.
pub const DEFAULT_HEALTH_SERVICES: [&str; 4] = ["hax", "confd", "ios", "s3service"];

/// What [`ClusterView::spawn`] needs besides a Consul client.
#[derive(Debug, Clone)]
pub struct ViewConfig {
    /// This node's name (as in `m0conf/nodes/<fid>` `name`).
    pub local_node: String,
    /// hax's process fid.
    pub hax_fid: Fid,
    /// Consul services whose health is followed.
    pub health_services: Vec<String>,
    /// Tuning of the watchers.
    pub watch: WatchConfig,
}

impl ViewConfig {
    /// The default services and watcher tuning.
    pub fn new(local_node: impl Into<String>, hax_fid: Fid) -> Self {
        ViewConfig {
            local_node: local_node.into(),
            hax_fid,
            health_services: DEFAULT_HEALTH_SERVICES.map(str::to_owned).to_vec(),
            watch: WatchConfig::default(),
        }
    }
}

/// Everything a view holds, as plain data ([`ClusterView::from_data`]).
#[derive(Debug, Clone, Default)]
pub struct ViewData {
    /// This node's name.
    pub local_node: String,
    /// hax's process fid.
    pub hax_fid: Fid,
    /// The configuration tree.
    pub conf: ConfTree,
    /// `processes/<fid>` entries.
    pub processes: BTreeMap<FidText, ProcessStatus>,
    /// Health entries of the followed services.
    pub health: Vec<ServiceEntry>,
    /// Host name → Consul node name (`consul/node/<host>`).
    pub consul_nodes: BTreeMap<String, String>,
    /// The RC leader's node name.
    pub leader: Option<String>,
    /// The node of the session holding `leader`.
    pub leader_session_node: Option<String>,
    /// Catalog instances of the `confd` service.
    pub confds: Vec<CatalogService>,
    /// `m0_client_types`.
    pub client_types: Vec<String>,
    /// Base fid → full fid (top-level `<base fid>` keys).
    pub dynamic_fids: BTreeMap<FidText, FidText>,
}

/// Why waiting for the view failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// Some parts were not read from Consul in time.
    #[error("cluster view not loaded within {timeout:?}: waiting for {missing:?}")]
    NotLoaded {
        /// How long was waited.
        timeout: Duration,
        /// The parts still missing.
        missing: Vec<&'static str>,
    },
    /// The condition waited for did not hold in time.
    #[error("cluster view condition not met within {0:?}")]
    Timeout(Duration),
}

// ---------------------------------------------------------------------------
// Fid helpers

// ---------------------------------------------------------------------------
// State vocabularies

// ---------------------------------------------------------------------------
// The structure of the configuration tree

// ---------------------------------------------------------------------------
// The immutable state

// ---------------------------------------------------------------------------
// The view

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct ViewInner {
    sources: Mutex<Sources>,
    current: RwLock<Arc<ClusterState>>,
    version: watch::Sender<u64>,
    /// Locked only under `sources`, so replies follow the states in order.
    entrypoint: Mutex<EntrypointPublisher>,
}

impl ViewInner {
    fn new(sources: Sources) -> Self {
        let state = sources.state();
        let mut entrypoint = EntrypointPublisher::new();
        entrypoint.refresh(&state);
        ViewInner {
            sources: Mutex::new(sources),
            current: RwLock::new(Arc::new(state)),
            version: watch::Sender::new(0),
            entrypoint: Mutex::new(entrypoint),
        }
    }

    /// Changes the sources and publishes the new state.
    fn update(&self, f: impl FnOnce(&mut Sources)) {
        let mut s = lock(&self.sources);
        f(&mut s);
        s.version += 1;
        let state = Arc::new(s.state());
        let version = s.version;
        lock(&self.entrypoint).refresh(&state);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = state;
        drop(s);
        self.version.send_replace(version);
    }
}

/// The daemon's in-memory read model of the cluster. Cloning is cheap (all
/// clones share one view); every method is synchronous and never waits on
/// Consul.
#[derive(Clone)]
pub struct ClusterView {
    inner: Arc<ViewInner>,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The whole tree would drown any log line that prints a view.
        let st = self.snapshot();
        f.debug_struct("ClusterView")
            .field("local_node", &st.local_node)
            .field("version", &st.version)
            .field("conf_entries", &st.conf.entries.len())
            .field("missing", &st.missing)
            .finish()
    }
}

impl ClusterView {
    /// A view of fixed data, loaded, without watchers (tests, tools).
    pub fn from_data(data: ViewData) -> Self {
        let mut s = Sources {
            local_node: data.local_node,
            hax_fid: data.hax_fid,
            leader: data.leader,
            leader_session_node: data.leader_session_node,
            confds: Arc::new(data.confds),
            client_types: Arc::new(data.client_types),
            consul_nodes: Arc::new(data.consul_nodes),
            dynamic_fids: Arc::new(data.dynamic_fids),
            ..Sources::default()
        };
        s.set_conf(data.conf, 0);
        s.set_processes(
            data.processes
                .into_iter()
                .map(|(f, st)| (f, (st, 0)))
                .collect(),
            0,
        );
        s.health = Arc::new(NodeHealthMap::from_entries(&data.health));
        s.health_by_service.insert(String::new(), data.health);
        ClusterView {
            inner: Arc::new(ViewInner::new(s)),
        }
    }

    /// A view kept up to date by Consul watchers, which run until `cancel`
    /// is cancelled; the tasks that feed the view run on `tasks`. Must be
    /// called inside a tokio runtime. The view starts empty and not loaded:
    /// wait with [`ClusterView::wait_loaded`].
    pub fn spawn(
        client: ConsulClient,
        config: ViewConfig,
        cancel: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let mut missing: BTreeSet<String> = [
            PART_CONF,
            PART_PROCESSES,
            PART_CONSUL_NODES,
            PART_LEADER,
            PART_CLIENT_TYPES,
            PART_CONFDS,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let services: BTreeSet<String> = config.health_services.iter().cloned().collect();
        missing.extend(services.iter().map(|s| format!("health:{s}")));
        let sources = Sources {
            local_node: config.local_node.clone(),
            hax_fid: config.hax_fid,
            missing,
            ..Sources::default()
        };
        let view = ClusterView {
            inner: Arc::new(ViewInner::new(sources)),
        };
        let wc = config.watch;
        let c = &client;
        view.follow(
            tasks,
            hax_consul::watch::watch_prefix(c.clone(), keys::CONF_PREFIX, wc, cancel),
            PART_CONF.to_owned(),
            |s, snap| s.read_conf(&snap.value, snap.index),
        );
        view.follow(
            tasks,
            hax_consul::watch::watch_prefix(c.clone(), keys::PROCESSES_PREFIX, wc, cancel),
            PART_PROCESSES.to_owned(),
            |s, snap| s.read_processes(&snap.value, snap.index),
        );
        view.follow(
            tasks,
            hax_consul::watch::watch_prefix(c.clone(), keys::CONSUL_NODES_PREFIX, wc, cancel),
            PART_CONSUL_NODES.to_owned(),
            |s, snap| s.consul_nodes = Arc::new(parse_consul_nodes(&snap.value)),
        );
        leader_session::follow(
            tasks,
            Arc::clone(&view.inner),
            c.clone(),
            hax_consul::watch::watch_key(c.clone(), keys::LEADER, wc, cancel),
            cancel.clone(),
        );
        view.follow(
            tasks,
            Watcher::spawn(c.clone(), CatalogServiceSource("confd".into()), wc, cancel),
            PART_CONFDS.to_owned(),
            |s, snap| s.confds = Arc::clone(&snap.value),
        );
        view.follow(
            tasks,
            hax_consul::watch::watch_key(c.clone(), keys::M0_CLIENT_TYPES, wc, cancel),
            PART_CLIENT_TYPES.to_owned(),
            |s, snap| s.client_types = Arc::new(parse_client_types(snap.value.as_ref().as_ref())),
        );
        for name in services {
            let source = ServiceHealthSource {
                name: name.clone(),
                passing_only: false,
            };
            let key = name.clone();
            view.follow(
                tasks,
                Watcher::spawn(c.clone(), source, wc, cancel),
                format!("health:{name}"),
                move |s, snap| s.set_health(&key, (*snap.value).clone()),
            );
        }
        let inner = Arc::clone(&view.inner);
        let client = client.clone();
        let token = cancel.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                fids = load_dynamic_fids(&client) => match fids {
                    Ok(m) if !m.is_empty() => {
                        tracing::info!(count = m.len(), "dynamic fids loaded");
                        inner.update(|s| s.dynamic_fids = Arc::new(m));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "dynamic fids not read, base fids used"),
                },
            }
        });
        view
    }

    /// Feeds the snapshots of `watcher` into the view with `apply`, from a
    /// task that owns the watcher and ends with it.
    fn follow<T, F>(&self, tasks: &TaskTracker, watcher: Watcher<T>, part: String, apply: F)
    where
        T: Clone + PartialEq + Default + Send + Sync + 'static,
        F: Fn(&mut Sources, &Snapshot<T>) + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tasks.spawn(async move {
            let mut rx = watcher.subscribe();
            let mut last: Option<Arc<T>> = None;
            loop {
                let snap = rx.borrow_and_update().clone();
                let fresh = !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &snap.value));
                if snap.loaded && fresh {
                    inner.update(|s| {
                        apply(s, &snap);
                        s.missing.remove(&part);
                    });
                    last = Some(Arc::clone(&snap.value));
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
            drop(watcher);
            tracing::debug!(%part, "view source stopped");
        });
    }

    /// The entrypoint reply of the current picture, and of every later one
    /// ([`entrypoint`]): `None` while it cannot be built.
    pub fn entrypoint(&self) -> EntrypointSnapshot {
        lock(&self.inner.entrypoint).subscribe()
    }

    /// The current picture.
    pub fn snapshot(&self) -> Arc<ClusterState> {
        Arc::clone(
            &self
                .inner
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// The state to answer an NVEC GET with ([`ClusterState::nvec_state`]).
    pub fn nvec_state(&self, fid: Fid) -> HaState {
        self.snapshot().nvec_state(fid)
    }

    /// A receiver notified at every change (the value is the version).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Waits until `pred` holds for the current picture, at most `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&ClusterState) -> bool,
    ) -> Result<Arc<ClusterState>, ViewError> {
        let mut rx = self.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let st = self.snapshot();
                if pred(&st) {
                    return Some(st);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match waited {
            Ok(Some(st)) => Ok(st),
            Ok(None) | Err(_) => Err(ViewError::Timeout(timeout)),
        }
    }

    /// Waits until every part has been read from Consul once.
    pub async fn wait_loaded(&self, timeout: Duration) -> Result<Arc<ClusterState>, ViewError> {
        self.wait_until(timeout, ClusterState::loaded)
            .await
            .map_err(|_| ViewError::NotLoaded {
                timeout,
                missing: self.snapshot().missing().to_vec(),
            })
    }

    /// Makes configuration entries hax has just written visible at once:
    /// each `(key, object, modify index of the write)` stands until a
    /// snapshot of `m0conf/` at least that new arrives.
    pub fn record_conf_writes(&self, writes: &[(ConfKey, ConfObject, u64)]) {
        if writes.is_empty() {
            return;
        }
        self.inner.update(|s| {
            for (key, obj, index) in writes {
                if *index > s.conf_index {
                    s.conf_overlay.insert(
                        key.clone(),
                        ConfEntry {
                            key: key.clone(),
                            value: ConfValue::Object(obj.clone()),
                            modify_index: *index,
                        },
                    );
                }
            }
            s.merge_conf();
        });
    }

    /// Makes a `processes/<fid>` write of hax's visible at once, until a
    /// snapshot of `processes/` at least as new as `index` (the write's
    /// modify index) arrives.
    pub fn record_process_status_at(&self, fid: Fid, status: ProcessStatus, index: u64) {
        self.inner.update(|s| {
            if index > s.processes_index {
                s.process_overlay
                    .insert(fid_text(fid), (status, Until::Index(index)));
            }
            s.merge_processes();
        });
    }

    /// Makes a `processes/<fid>` write of hax's visible at once when its
    /// modify index is not known (it goes through the daemon's writer): it
    /// stands until the entry changes in a snapshot.
    pub fn record_process_status(&self, fid: Fid, status: ProcessStatus) {
        self.inner.update(|s| {
            let seen = s
                .processes_snapshot
                .get(&fid_text(fid))
                .map_or(0, |(_, i)| *i);
            s.process_overlay
                .insert(fid_text(fid), (status, Until::EntryNewerThan(seen)));
            s.merge_processes();
        });
    }
}

impl crate::model::facts::StateSource for ClusterView {
    fn nvec_state(&self, fid: Fid) -> HaState {
        ClusterView::nvec_state(self, fid)
    }
}

impl crate::model::facts::ClusterFacts for ClusterView {
    fn hax_fid(&self) -> Fid {
        self.snapshot().hax_fid()
    }

    fn local_node(&self) -> String {
        self.snapshot().local_node().to_owned()
    }

    fn is_confd(&self, process: Fid) -> bool {
        self.snapshot().is_confd(process)
    }

    fn is_client(&self, process: Fid) -> bool {
        self.snapshot().is_client(process)
    }

    fn is_local(&self, process: Fid) -> bool {
        self.snapshot().is_local_process(process)
    }

    fn drive_of_device(&self, node: &str, device: &str) -> Option<Fid> {
        self.snapshot().drive_of_device(node, device)
    }

    fn record_process_status(&self, process: Fid, status: ProcessStatus) {
        ClusterView::record_process_status(self, process, status);
    }
}

// ---------------------------------------------------------------------------
// A sample cluster

#[cfg(test)]
mod tests {
    use super::sample::{self, Sample};
    use super::*;
    use crate::model::vocab::base_fid;
    use hax_consul::schema::ProcessState;
    use hax_consul::schema::ProcessType;
    use hax_consul::KvPair;
    use hax_core::FidType;

    fn set_state(d: &mut ViewData, key: &ConfKey, state: &str) {
        match d.conf.entries.get_mut(key).map(|e| &mut e.value) {
            Some(ConfValue::Object(o)) => o.state = Some(state.to_owned()),
            other => panic!("{key}: {other:?}"),
        }
    }

    fn sdev_key(st: &ClusterState, sdev: Fid) -> ConfKey {
        st.sdev_keys(sdev)[0].clone()
    }

    fn with_status(d: &mut ViewData, p: Fid, state: ProcessState) {
        d.processes
            .get_mut(&fid_text(p))
            .unwrap_or_else(|| panic!("{p}"))
            .state = state;
    }

    #[test]
    fn the_sample_has_the_expected_shape() {
        let st = ClusterView::from_data(sample::view_data()).snapshot();
        assert!(st.loaded());
        assert!(st.conf().unrecognised.is_empty());
        assert_eq!(st.node_name_of_process(Sample::IOS2B), Some("srvnode-2"));
        assert_eq!(st.node_fid_by_name("srvnode-2"), Some(Sample::NODE2));
        assert!(st.is_local_process(Sample::CONFD1));
        assert!(!st.is_local_process(Sample::HAX2));
        assert!(st.is_confd(Sample::CONFD1) && !st.is_confd(Sample::IOS1));
        assert_eq!(
            st.services_of_process(Sample::IOS1),
            vec![("ios", Sample::IOS1_SVC), ("rms", Sample::RMS_IOS1)]
        );
        assert_eq!(st.process_of_service(Sample::RMS_IOS1), Some(Sample::IOS1));
        assert_eq!(
            st.sdevs_of(Sample::IOS1, Sample::IOS1_SVC),
            vec![Sample::SDEV1A, Sample::SDEV1B]
        );
        assert_eq!(st.drive_of_sdev(Sample::SDEV2C), Some(Sample::DRIVE2C));
        assert_eq!(st.drive_of_sdev(Sample::SDEV2_ORPHAN), None);
        assert_eq!(st.sdev_of_drive(Sample::DRIVE1B), Some(Sample::SDEV1B));
        assert_eq!(st.ctrl_of_process(Sample::IOS2A), Some(Sample::CTRL2));
        assert_eq!(st.ctrl_of_process(Sample::HAX1), None);
        assert_eq!(st.encl_of_node(Sample::NODE1), Some(Sample::ENCL1));
        assert_eq!(st.ctrls_of_encl(Sample::ENCL2), vec![Sample::CTRL2]);
        assert_eq!(
            st.ios_processes_of_node(Sample::NODE2),
            vec![Sample::IOS2A, Sample::IOS2B]
        );
        assert_eq!(
            st.endpoint_of_process(Sample::IOS1).map(str::to_owned),
            Some(Sample::endpoint(Sample::IOS1))
        );
        assert_eq!(st.full_fid(Sample::HA1), Sample::HA1);
        assert_eq!(
            st.drive_of_device("srvnode-2", "/dev/sdd"),
            Some(Sample::DRIVE2C)
        );
        assert_eq!(st.drive_of_device("srvnode-1", "/dev/sdd"), None);
        assert_eq!(
            st.drive_of_device("srvnode-2", "/dev/sde"),
            None,
            "an sdev without a drive has no drive (not 0:0)"
        );
        assert!(!st.is_rc());
        assert!(!st.is_client(Sample::IOS1));
    }

    #[test]
    fn processes_and_services_answer_their_health() {
        let st = ClusterView::from_data(sample::view_data()).snapshot();
        for p in [Sample::IOS1, Sample::IOS2A, Sample::HAX2] {
            assert_eq!(st.nvec_state(p), HaState::Online, "{p}");
        }
        assert_eq!(st.nvec_state(Sample::IOS1_SVC), HaState::Online);

        let mut d = sample::view_data();
        d.health = sample::health_entries(&[(Sample::IOS1.key, "critical")], false);
        for p in [Sample::IOS1, Sample::CONFD1, Sample::IOS2A, Sample::HAX2] {
            with_status(&mut d, p, ProcessState::Started);
        }
        let st = ClusterView::from_data(d).snapshot();
        assert_eq!(
            st.nvec_state(Sample::IOS1),
            HaState::Transient,
            "check critical"
        );
        assert_eq!(
            st.nvec_state(Sample::IOS1_SVC),
            HaState::Transient,
            "via its process"
        );
        assert_eq!(st.nvec_state(Sample::RMS_IOS1), HaState::Transient);
        assert_eq!(
            st.nvec_state(Sample::CONFD1),
            HaState::Online,
            "a started confd skips DTM recovery"
        );
        assert_eq!(
            st.nvec_state(Sample::IOS2A),
            HaState::Transient,
            "node 2 is dead"
        );

        let mut d = sample::view_data();
        for p in [Sample::IOS1, Sample::HAX1, Sample::IOS2A] {
            with_status(&mut d, p, ProcessState::Started);
        }
        let st = ClusterView::from_data(d).snapshot();
        assert_eq!(st.nvec_state(Sample::IOS1), HaState::DtmRecovering);
        assert_eq!(st.nvec_state(Sample::IOS2A), HaState::DtmRecovering);
        assert_eq!(
            st.nvec_state(Sample::HAX1),
            HaState::Online,
            "hax skips DTM recovery"
        );
        assert_eq!(st.nvec_state(Sample::HA1), HaState::Online);

        let mut d = sample::view_data();
        with_status(&mut d, Sample::IOS2A, ProcessState::Stopping);
        with_status(&mut d, Sample::IOS1, ProcessState::Stopping);
        d.processes.remove(&fid_text(Sample::IOS2B));
        let st = ClusterView::from_data(d).snapshot();
        assert_eq!(
            st.nvec_state(Sample::IOS2A),
            HaState::Transient,
            "remote STOPPING"
        );
        assert_eq!(
            st.nvec_state(Sample::IOS1),
            HaState::Transient,
            "local STOPPING is UNKNOWN, broadcast as TRANSIENT"
        );
        assert_eq!(
            st.nvec_state(Sample::IOS2B),
            HaState::Transient,
            "no record"
        );
    }

    #[test]
    fn consul_nodes_are_found_through_the_mapping() {
        let mut d = sample::view_data();
        // Without the mapping, the container suffix is stripped.
        d.consul_nodes.clear();
        let st = ClusterView::from_data(d.clone()).snapshot();
        assert_eq!(st.nvec_state(Sample::IOS1), HaState::Online);
        // A mapping to a node Consul does not know: no checks, OFFLINE.
        d.consul_nodes
            .insert(Sample::NODE1_NAME.into(), "elsewhere".into());
        let st = ClusterView::from_data(d).snapshot();
        assert_eq!(st.nvec_state(Sample::IOS1), HaState::Transient);
    }

    #[test]
    fn sdevs_and_drives_answer_the_sdev_state() {
        let base = ClusterView::from_data(sample::view_data()).snapshot();
        // cfgen's initial M0_NC_UNKNOWN reads as ONLINE.
        assert_eq!(base.nvec_state(Sample::SDEV1A), HaState::Online);
        assert_eq!(base.nvec_state(Sample::DRIVE1A), HaState::Online);
        let table = [
            ("unknown", HaState::Online),
            ("online", HaState::Online),
            ("dtm_recovering", HaState::Online),
            ("offline", HaState::Transient),
            ("failed", HaState::Failed),
            ("repairing", HaState::Repair),
            ("repaired", HaState::Repaired),
            ("rebalancing", HaState::Rebalance),
            ("bogus", HaState::Online),
        ];
        for (word, want) in table {
            let mut d = sample::view_data();
            set_state(&mut d, &sdev_key(&base, Sample::SDEV1B), word);
            let st = ClusterView::from_data(d).snapshot();
            assert_eq!(st.nvec_state(Sample::SDEV1B), want, "{word}");
            assert_eq!(st.nvec_state(Sample::DRIVE1B), want, "drive of {word}");
            assert_eq!(st.nvec_state(Sample::DRIVE1A), HaState::Online);
        }
        let unknown_drive = Fid::typed(FidType::Drive, 1, 0x999);
        assert_eq!(base.nvec_state(unknown_drive), HaState::Online);
        assert_eq!(
            base.nvec_state(Fid::typed(FidType::Sdev, 1, 0x999)),
            HaState::Online
        );
    }

    #[test]
    fn nodes_enclosures_and_controllers_answer_their_nc_state() {
        let base = ClusterView::from_data(sample::view_data()).snapshot();
        for f in [Sample::NODE1, Sample::ENCL1, Sample::CTRL2] {
            assert_eq!(base.nvec_state(f), HaState::Transient, "M0_NC_UNKNOWN {f}");
        }
        let mut d = sample::view_data();
        set_state(
            &mut d,
            &ConfKey::Node {
                node: fid_text(Sample::NODE1),
            },
            "M0_NC_FAILED",
        );
        set_state(&mut d, &base.encl_keys(Sample::ENCL1)[0], "M0_NC_ONLINE");
        set_state(&mut d, &base.ctrl_keys(Sample::CTRL2)[0], "M0_NC_REPAIR");
        let st = ClusterView::from_data(d).snapshot();
        assert_eq!(st.nvec_state(Sample::NODE1), HaState::Failed);
        assert_eq!(st.nvec_state(Sample::ENCL1), HaState::Online);
        assert_eq!(st.nvec_state(Sample::CTRL2), HaState::Repair);
        for absent in [
            Fid::typed(FidType::Node, 1, 0x999),
            Fid::typed(FidType::Enclosure, 1, 0x999),
            Fid::typed(FidType::Controller, 1, 0x999),
            Fid::typed(FidType::Process, 1, 0x999),
            Fid::typed(FidType::Service, 1, 0x999),
        ] {
            assert_eq!(st.nvec_state(absent), HaState::Online, "{absent}");
        }
        for other in [Sample::POOL, Sample::SITE, Sample::RACK, Sample::PROFILE] {
            assert_eq!(st.nvec_state(other), HaState::Online, "{other}");
        }
    }

    #[test]
    fn own_writes_stand_until_the_snapshot_catches_up() {
        let view = ClusterView::from_data(sample::view_data());
        let key = sdev_key(&view.snapshot(), Sample::SDEV1A);
        let mut obj = view.snapshot().conf_object(&key).cloned().expect("sdev");
        obj.state = Some("failed".into());
        view.record_conf_writes(&[(key.clone(), obj.clone(), 500)]);
        assert_eq!(view.nvec_state(Sample::DRIVE1A), HaState::Failed);
        assert_eq!(
            view.snapshot().conf_entry(&key).map(|e| e.modify_index),
            Some(500)
        );

        // A snapshot older than the write does not undo it...
        let tree = ConfTree::from_pairs(&sample::conf_pairs()).expect("tree");
        view.inner.update(|s| s.set_conf(tree.clone(), 499));
        assert_eq!(view.nvec_state(Sample::DRIVE1A), HaState::Failed);
        // ...one at least as new replaces it (here: someone else's later write).
        view.inner.update(|s| s.set_conf(tree, 500));
        assert_eq!(view.nvec_state(Sample::DRIVE1A), HaState::Online);

        let status = ProcessStatus {
            state: ProcessState::Stopped,
            kind: ProcessType::M0d,
        };
        let listed = |index: u64| {
            sample::process_statuses()
                .into_iter()
                .map(|(f, s)| (f, (s, index)))
                .collect::<BTreeMap<_, _>>()
        };
        view.record_process_status_at(Sample::IOS1, status, 10);
        assert_eq!(view.snapshot().process_status(Sample::IOS1), Some(status));
        view.inner.update(|s| s.set_processes(listed(9), 9));
        assert_eq!(view.snapshot().process_status(Sample::IOS1), Some(status));
        view.inner.update(|s| s.set_processes(listed(10), 10));
        assert_eq!(
            view.snapshot()
                .process_status(Sample::IOS1)
                .map(|s| s.state),
            Some(ProcessState::DtmRecovered)
        );

        // Index unknown: stands until the entry changes.
        view.record_process_status(Sample::IOS1, status);
        view.inner.update(|s| s.set_processes(listed(10), 12));
        assert_eq!(view.snapshot().process_status(Sample::IOS1), Some(status));
        view.inner.update(|s| s.set_processes(listed(13), 13));
        assert_eq!(
            view.snapshot()
                .process_status(Sample::IOS1)
                .map(|s| s.state),
            Some(ProcessState::DtmRecovered)
        );
    }

    #[test]
    fn malformed_entries_are_left_out_alone() {
        let mut pairs: BTreeMap<String, KvPair> = sample::conf_pairs()
            .into_iter()
            .map(|p| (p.key.clone(), p))
            .collect();
        let node_key = format!("m0conf/nodes/{}", Sample::NODE2);
        if let Some(p) = pairs.get_mut(&node_key) {
            p.value = b"{not json".to_vec();
        }
        let mut s = Sources::default();
        s.read_conf(&pairs, 1);
        let tree = &s.conf;
        assert!(!tree.entries.contains_key(&ConfKey::Node {
            node: fid_text(Sample::NODE2)
        }));
        assert!(tree.entries.contains_key(&ConfKey::Node {
            node: fid_text(Sample::NODE1)
        }));
    }

    #[test]
    fn leader_and_client_types_parse() {
        let pair = |v: &str| KvPair {
            key: "k".into(),
            value: v.as_bytes().to_vec(),
            flags: 0,
            create_index: 1,
            modify_index: 1,
            lock_index: 0,
            session: None,
        };
        assert_eq!(
            parse_leader(Some(&pair("srvnode-1"))),
            Some("srvnode-1".into())
        );
        assert_eq!(parse_leader(Some(&pair("elect2805"))), None);
        assert_eq!(parse_leader(Some(&pair(""))), None);
        assert_eq!(parse_leader(None), None);
        assert_eq!(
            parse_client_types(Some(&pair(r#"["m0_client_s3", "m0_client_other"]"#))),
            vec!["m0_client_s3".to_owned(), "m0_client_other".to_owned()]
        );
        assert!(parse_client_types(Some(&pair("nope"))).is_empty());
        let mut d = sample::view_data();
        d.leader = Some(Sample::NODE1_NAME.into());
        let st = ClusterView::from_data(d).snapshot();
        assert!(st.is_rc());
    }

    #[test]
    fn base_fids_drop_the_dynamic_part() {
        let dynamic = Fid::typed(FidType::Process, 1, (7 << 32) | 0xc);
        assert_eq!(base_fid(dynamic), Sample::IOS1);
        assert_eq!(base_fid(Sample::DRIVE1A), Sample::DRIVE1A);
        let st = ClusterView::from_data(sample::view_data()).snapshot();
        assert_eq!(st.node_name_of_process(dynamic), Some(Sample::NODE1_NAME));
    }
}
