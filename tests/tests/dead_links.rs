//! A process that comes back with a new incarnation leaves no link behind:
//! whatever its restart count, and whether or not hax ever heard of its state
//! before, the links of its previous incarnations end before the new one is
//! answered, and nothing hax kept for them stays.
//!
//! Motr's halon interface fences (disconnects every link of) a process only
//! when hax's own link receives a FAILED note for it that is neither the
//! first note it sees for that fid nor, with `ignore_same_state`, the state
//! it already holds (`ha/halon/interface.c`,
//! `halon_interface_process_failure_check`); the emulator does the same.

use std::time::Instant;

use hax_e2e::{assert_no_violations, ios_fid, Env, Options};
use hax_sim::{LinkOutcome, LinkState, SimError, SimProcess};

/// As `m0ham` restarting: a process that connects, never sends an event, and
/// vanishes; then the same fid again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_of_a_silent_process_leave_one_link() {
    const ROUNDS: usize = 6;
    let env = Env::start(Options::default()).await;
    let victim = ios_fid(0);
    // One other live process, which must keep its link throughout.
    let other = SimProcess::connect(env.peer_config(1)).await.unwrap();
    let base = env.wait_idle().await;
    let links = base.n("hax_links");
    assert_eq!(links, 2, "hax's own link and the other process");

    let mut prev: Option<SimProcess> = None;
    let mut connects = Vec::new();
    for round in 0..ROUNDS {
        let t = Instant::now();
        let v = SimProcess::connect(env.peer_config(0)).await.unwrap();
        connects.push(t.elapsed());
        assert_eq!(v.entrypoint().unwrap().outcome, LinkOutcome::New);
        // Every earlier incarnation's link is gone: hax holds its own, the
        // other process's and this one's.
        let m = env
            .wait_metrics("the old incarnations' links to end", |m| {
                m.n("hax_links") == links + 1
            })
            .await;
        eprintln!("round {round}: links back at {:?}", t.elapsed());
        assert_eq!(
            m.n("hax_links_disconnected_total"),
            base.n("hax_links_disconnected_total") + round as u64,
            "round {round}: exactly one link ended per restart"
        );
        if let Some(old) = prev.take() {
            // Coming back, the old incarnation learns it was fenced.
            assert!(matches!(old.reattach().await, Err(SimError::Fenced)));
            assert_eq!(old.state(), LinkState::Fenced);
        }
        eprintln!("round {round}: done at {:?}", t.elapsed());
        // The live incarnation's link was not fenced with the old ones.
        assert_eq!(v.state(), LinkState::Up, "round {round}");
        v.vanish();
        prev = Some(v);
    }
    assert_eq!(other.state(), LinkState::Up);
    assert_no_violations(std::slice::from_ref(&other));
    env.assert_no_contract_violations();
    eprintln!("connect times of {ROUNDS} incarnations of {victim}: {connects:?}");
}
