//! hax SIGKILLed at random points of a broadcast-queue run and restarted,
//! round after round (`broadcasts.rs` does one round).
//!
//! What the protocol guarantees at a kill boundary (hare-hax.md §3.5, and
//! `bq.rs`): an entry's offset is committed after its broadcast was
//! delivered, in one transaction with its effects. So:
//!
//! * hax as a whole handles every entry, in order: each run starts with the
//!   entry after the last one committed; that is the last entry the killed
//!   run handled, or the one after it (no gap); the only entry handled twice
//!   is the one whose commit the kill interrupted (at most one per kill);
//! * a peer receives, from each run, every entry that run handled from the
//!   moment the peer's link was back, in order, up to the end of the run;
//!   the last one may be missing only if it is the one handled again.
//!   Entries a restarted hax handled before a peer reattached went to the
//!   links there were; the peer learns the current state on reconnection.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hax_consul::queue::QueuePublisher;
use hax_consul::schema::QueueKind;
use hax_core::{Fid, HaState};
use hax_e2e::{assert_no_violations, device_entry, nvec_sets, wait_for, Env, Options, T};
use hax_sim::{LinkOutcome, LinkState, SimProcess};

const DRIVES: usize = 6;

/// The note entry `i` is broadcast as: drive `i % 6` failed or online in
/// turns, so consecutive entries always differ.
fn note(drives: &[Fid], i: usize) -> (Fid, HaState) {
    let s = if (i / DRIVES) % 2 == 0 {
        HaState::Failed
    } else {
        HaState::Online
    };
    (drives[i % DRIVES], s)
}

fn drive_notes(drives: &[Fid], p: &SimProcess) -> Vec<(Fid, HaState)> {
    nvec_sets(&p.received())
        .into_iter()
        .filter(|n| n.len() == 1 && drives.contains(&n[0].fid))
        .map(|n| (n[0].fid, n[0].state))
        .collect()
}

async fn kill_rounds(rounds: usize) {
    let mut env = Env::start(Options {
        ioservices: DRIVES as u64,
        ..Options::default()
    })
    .await;
    let peers = env.connect_peers(3).await;
    let (node, drives) = (env.sample.node.clone(), env.sample.drives.clone());

    // Entries are published all along, at about 30 a second, also while hax
    // is down; the epoch of each, by index.
    let stop = Arc::new(AtomicBool::new(false));
    let epochs = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let publisher = tokio::spawn({
        let (client, stop, epochs) = (env.client.clone(), Arc::clone(&stop), Arc::clone(&epochs));
        async move {
            let publisher = QueuePublisher::new(client, QueueKind::Broadcast);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let state = if (i / DRIVES) % 2 == 0 {
                    "failed"
                } else {
                    "online"
                };
                let e = publisher
                    .publish(&device_entry(&node, i % DRIVES, state))
                    .await
                    .expect("publish");
                epochs.lock().unwrap().push(e);
                i += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    });

    // Per peer, how many notes it had at each kill; per run, the BQ keys it
    // had begun when every peer was back.
    let mut boundaries: Vec<Vec<usize>> = vec![Vec::new(); peers.len()];
    let mut begun_before_attach: Vec<BTreeSet<String>> = vec![BTreeSet::new()];
    let started = Instant::now();
    for round in 0..rounds {
        // A random point of the run: after 1 to 8 more entries reached peer 0.
        let seen = drive_notes(&drives, &peers[0]).len();
        let more = fastrand::usize(1..=8);
        wait_for("entries to reach peer 0", T, || async {
            (drive_notes(&drives, &peers[0]).len() >= seen + more).then_some(())
        })
        .await;
        env.sigkill();
        for (k, p) in peers.iter().enumerate() {
            p.wait_state(LinkState::Disconnected, T).await.unwrap();
            boundaries[k].push(drive_notes(&drives, p).len());
        }
        env.start_hax().await;
        for p in &peers {
            let e = p.reattach().await.unwrap();
            assert_eq!(
                e.outcome,
                LinkOutcome::Reconnected,
                "round {round}: {}",
                p.fid()
            );
        }
        begun_before_attach.push(
            env.log_messages(env.runs(), "BQ message")
                .iter()
                .filter_map(|l| l["key"].as_str().map(str::to_owned))
                .collect(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let epochs = epochs.lock().unwrap().clone();
    let published = epochs.len();
    let last = *epochs.last().unwrap();
    wait_for("the BQ offset to reach the last entry", T, || async {
        (env.bq_offset().await == last).then_some(())
    })
    .await;
    let last_note = note(&drives, published - 1);
    wait_for("every peer to receive the last entry", T, || async {
        peers
            .iter()
            .all(|p| drive_notes(&drives, p).last() == Some(&last_note))
            .then_some(())
    })
    .await;
    let elapsed = started.elapsed();

    // hax as a whole: every entry, in order; a run starts at the entry after
    // the last one committed.
    let index_of = |key: &str| -> Option<usize> {
        let n: u64 = key.strip_prefix("bq/")?.parse().ok()?;
        epochs.iter().position(|e| *e == n)
    };
    let handled: Vec<Vec<usize>> = (1..=env.runs())
        .map(|run| {
            env.log_messages(run, "BQ message")
                .iter()
                .filter_map(|l| index_of(l["key"].as_str()?))
                .collect()
        })
        .collect();
    let mut hax_repeats = Vec::new();
    let mut next = 0;
    for (r, h) in handled.iter().enumerate() {
        let first = *h
            .first()
            .unwrap_or_else(|| panic!("run {} handled nothing", r + 1));
        if first + 1 == next {
            hax_repeats.push(first);
        } else {
            assert_eq!(first, next, "run {} started at entry {first}", r + 1);
        }
        assert_eq!(
            *h,
            (first..first + h.len()).collect::<Vec<_>>(),
            "run {} handled entries out of order",
            r + 1
        );
        next = first + h.len();
    }
    assert_eq!(next, published, "entries handled in all");
    assert!(hax_repeats.len() <= rounds);

    // Each peer: from each run, a contiguous block ending at the run's last
    // entry (or the one before, when that one was handled again).
    let mut peer_repeats = 0;
    let mut missed_before_attach = 0;
    for (k, p) in peers.iter().enumerate() {
        let got = drive_notes(&drives, p);
        let mut cuts = vec![0];
        cuts.extend(&boundaries[k]);
        cuts.push(got.len());
        for (r, h) in handled.iter().enumerate() {
            let block = &got[cuts[r]..cuts[r + 1]];
            let first_required = h
                .iter()
                .position(|i| !begun_before_attach[r].contains(&format!("bq/{}", epochs[*i])))
                .unwrap_or(h.len());
            let want = |a: usize, b: usize| -> Vec<(Fid, HaState)> {
                h[a..b].iter().map(|i| note(&drives, *i)).collect()
            };
            let end_again = r + 1 < handled.len() && handled[r + 1].first() == h.last();
            let fits = (0..=first_required.min(h.len())).find_map(|a| {
                if block == want(a, h.len()).as_slice() {
                    Some((a, false))
                } else if end_again && h.len() > a && block == want(a, h.len() - 1).as_slice() {
                    Some((a, true))
                } else {
                    None
                }
            });
            let Some((a, _short)) = fits else {
                panic!(
                    "{} run {}: received {block:?}, the run handled {h:?} (entries from \
                     position {first_required} required)",
                    p.fid(),
                    r + 1
                );
            };
            missed_before_attach += a;
            // The entry handled again: received twice if it was received in
            // the run before.
            if r > 0 && !block.is_empty() {
                let prev = &got[cuts[r - 1]..cuts[r]];
                if prev.last() == block.first() && handled[r - 1].last() == h.first() {
                    peer_repeats += 1;
                }
            }
        }
    }
    eprintln!(
        "{rounds} kills in {elapsed:?}: {published} entries; hax handled again {} ({hax_repeats:?}); \
         peers received {peer_repeats} repeats in all, missed {missed_before_attach} entries \
         handled before they reattached",
        hax_repeats.len()
    );
    assert!(peer_repeats <= hax_repeats.len() * peers.len());
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}

/// About 5 s of kills: part of the default run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_bq_runs_20_rounds() {
    kill_rounds(20).await;
}

/// `cargo test -p hax-e2e --test faults_bq_kill -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 200 kills of hax"]
async fn sigkill_during_bq_runs_200_rounds() {
    kill_rounds(200).await;
}
