//! A graceful stop never fences a live process.
//!
//! Motr's stop disconnects every link before it stops the entrypoint
//! service. A peer told NOLINK asks again at once, and any answer to that
//! request, whatever its rc, carries `disconnected_previously`, on which a
//! real m0d asserts and dies. hax withholds those requests: the peer keeps
//! waiting, and reaches the next hax, which takes it back with
//! `do_reconnect`.
//!
//! `emu-ep-linger-ms` keeps the emulator's entrypoint service up a while after
//! the last link is gone (real Motr's stays up until every link's RPC
//! disconnect has ended, up to 5 s each), so that every peer's second
//! request reaches the stopping hax in every round.

use std::time::Duration;

use hax_e2e::{assert_no_violations, wait_for, Env, Options, T};
use hax_sim::{LinkOutcome, LinkState, SimEventKind, SimProcess};

const ROUNDS: usize = 3;
const PEERS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_never_fences_live_peers() {
    let mut env = Env::start(Options {
        hax_env: vec![(
            "HAX_MOTR_DEBUG_OPTIONS".into(),
            "log-entrypoint log-link emu-ep-linger-ms=300".into(),
        )],
        ..Options::default()
    })
    .await;
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let cfgs: Vec<_> = (0..PEERS)
        .map(|i| {
            let mut c = env.peer_config(i);
            c.events = Some(tx.clone());
            c
        })
        .collect();
    let peers: Vec<SimProcess> = hax_sim::SimCluster::connect(cfgs)
        .await
        .expect("peers connected")
        .into_processes();

    for round in 1..=ROUNDS {
        if round > 1 {
            env.start_hax().await;
            // Each peer comes back to the new hax: its link is made again
            // (hax restarted), never refused as fenced.
            for p in &peers {
                let ep = p
                    .reattach()
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: {} reattach: {e}", p.fid()));
                assert_eq!(ep.outcome, LinkOutcome::Reconnected, "round {round}");
            }
        }
        assert!(peers.iter().all(|p| p.state() == LinkState::Up));

        env.sigterm();
        let status = env.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "round {round}: exit status {status}");
        wait_for("every peer to see hax gone", T, || async {
            peers
                .iter()
                .all(|p| matches!(p.state(), LinkState::Disconnected | LinkState::Fenced))
                .then_some(())
        })
        .await;

        let mut nolink = 0;
        while let Ok(e) = events.try_recv() {
            match e.kind {
                SimEventKind::Fenced(rep) => panic!(
                    "round {round}: {} was fenced by the stopping hax ({rep:?}); its log:\n{}",
                    e.process,
                    env.log_tail(round, 60)
                ),
                SimEventKind::NoLink { .. } => nolink += 1,
                _ => {}
            }
        }
        // The race was run: every peer was told NOLINK and asked again.
        assert!(nolink >= PEERS, "round {round}: {nolink} NOLINKs");
        let log = env.log_text(round);
        assert!(
            !log.contains("link absent"),
            "round {round}: a stop-time request was answered as absent"
        );
        assert!(
            log.contains("withheld"),
            "round {round}: no request was withheld; log:\n{}",
            env.log_tail(round, 60)
        );
        for p in &peers {
            assert_ne!(p.state(), LinkState::Fenced, "round {round}: {}", p.fid());
        }
    }
    assert_no_violations(&peers);
    for p in &peers {
        p.close();
    }
}
