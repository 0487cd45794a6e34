//! Helpers of the cluster tests (`tests/cluster_*.rs`): hax-testkit's
//! [`ClusterBed`] with this crate's `hax`, and what the tests read back: the
//! broadcast queue, the consumers' offsets, the failure notes each
//! simulated process received.

use std::time::Duration;

use hax_consul::schema::{BroadcastMessage, FidText, ProcessState, QueueKind, QueueMessage};
use hax_consul::ConsulClient;
use hax_core::{Fid, HaMsgData, HaState, NvecKind};
use hax_sim::SimProcess;
use hax_testkit::cluster::{BedSpec, ClusterBed};

use crate::hax_binary;

/// Deadline of a cluster bed's start-up steps.
pub const BED_TIMEOUT: Duration = Duration::from_secs(60);

/// The bed's settings for `nodes` nodes of `ioservices` ioservices each,
/// with this crate's `hax`.
pub fn spec(nodes: usize, ioservices: usize) -> BedSpec {
    let mut s = BedSpec::new(hax_binary(), nodes, ioservices);
    s.timeout = BED_TIMEOUT;
    s
}

/// Starts a bed, timing it.
pub async fn start(spec: BedSpec) -> ClusterBed {
    let t = std::time::Instant::now();
    let bed = ClusterBed::start(spec).await.expect("cluster bed started");
    eprintln!("cluster bed ready in {:?}", t.elapsed());
    bed
}

/// The text form of a fid.
pub fn ft(f: Fid) -> FidText {
    FidText::new(f.container, f.key)
}

/// Every `bq/<n>` entry, in queue order.
pub async fn bq(client: &ConsulClient) -> Vec<(u64, QueueMessage)> {
    let pairs = client
        .kv_list(QueueKind::Broadcast.prefix())
        .await
        .expect("bq/ listed")
        .value;
    let mut out: Vec<(u64, QueueMessage)> = pairs
        .iter()
        .filter_map(|p| {
            let n = QueueKind::Broadcast.parse_entry_key(&p.key)?;
            Some((n, QueueMessage::decode(&p.key, &p.value).expect("bq entry")))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out
}

/// The processes the broadcast queue announces STOPPED, among `fids`, in
/// queue order, each as often as announced.
pub async fn bq_stopped(client: &ConsulClient, fids: &[Fid]) -> Vec<Fid> {
    bq(client)
        .await
        .into_iter()
        .filter_map(|(n, m)| match m.broadcast(&format!("bq/{n}")).ok()? {
            BroadcastMessage::ProcessStateUpdate(u) if u.state == ProcessState::Stopped => {
                fids.iter().find(|f| ft(**f) == u.fid).copied()
            }
            _ => None,
        })
        .collect()
}

/// The consumed offset (`bq-delivered/<node>`) of `node`.
pub async fn bq_offset(client: &ConsulClient, node: &str) -> Option<u64> {
    let key = QueueKind::Broadcast.offset_key(node).ok()?;
    let pair = client.kv_get(&key).await.ok()?.value?;
    String::from_utf8_lossy(&pair.value).trim().parse().ok()
}

/// Whether every one of `nodes` consumed the broadcast queue to its end.
pub async fn bq_consumed(client: &ConsulClient, nodes: &[&str]) -> bool {
    let Some(last) = bq(client).await.last().map(|(n, _)| *n) else {
        return true;
    };
    for n in nodes {
        if bq_offset(client, n).await.is_none_or(|o| o < last) {
            return false;
        }
    }
    true
}

/// Whether a note state tells a process is down (OFFLINE health is sent
/// as TRANSIENT).
pub fn is_down(state: HaState) -> bool {
    matches!(state, HaState::Failed | HaState::Transient)
}

/// The processes among `fids` that `p` was told are down, in the order it
/// was told, once per NVEC SET that told it.
pub fn told_down(p: &SimProcess, fids: &[Fid]) -> Vec<Fid> {
    p.received()
        .iter()
        .filter_map(|r| match &r.msg.data {
            HaMsgData::Nvec(n) if n.kind == NvecKind::Set && n.id_of_get == 0 => {
                Some(n.notes.clone())
            }
            _ => None,
        })
        .flat_map(|notes| {
            let mut seen: Vec<Fid> = Vec::new();
            for n in notes {
                if fids.contains(&n.fid) && is_down(n.state) && !seen.contains(&n.fid) {
                    seen.push(n.fid);
                }
            }
            seen
        })
        .collect()
}

/// Every peer except `failed` and those of the nodes `gone` told of each
/// of `failed` exactly once, with the queue consumed to its end by every
/// node not gone first (nothing more can come from it then); unless the
/// queue is being trimmed (`trimmed`), it announces each once.
pub async fn told_everywhere_once(
    bed: &ClusterBed,
    failed: &[Fid],
    gone: &[&str],
    trimmed: bool,
    timeout: Duration,
) {
    let names: Vec<&str> = bed
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| !gone.contains(n))
        .collect();
    let recipients: Vec<&SimProcess> = bed
        .nodes
        .iter()
        .filter(|n| !gone.contains(&n.name.as_str()))
        .flat_map(|n| n.peers.iter())
        .filter(|p| !failed.contains(&p.fid()))
        .collect();
    crate::wait_for(
        "every process to hear of every failure",
        timeout,
        || async {
            recipients
                .iter()
                .all(|p| {
                    let told = told_down(p, failed);
                    failed.iter().all(|f| told.contains(f))
                })
                .then_some(())
        },
    )
    .await;
    let client = bed.node_client(names[0]).expect("client");
    let queue = crate::wait_for("every node to consume the queue", timeout, || async {
        let queue = bq_stopped(&client, failed).await;
        let complete = trimmed || queue.len() >= failed.len();
        (complete && bq_consumed(&client, &names).await).then_some(queue)
    })
    .await;
    if !trimmed {
        let mut sorted = queue.clone();
        sorted.sort();
        let mut want = failed.to_vec();
        want.sort();
        assert_eq!(sorted, want, "each failure queued once: {queue:?}");
    }
    for p in &recipients {
        let told = told_down(p, failed);
        for f in failed {
            assert_eq!(
                told.iter().filter(|x| *x == f).count(),
                1,
                "{} told of {f} once: {told:?}",
                p.fid()
            );
        }
    }
}
