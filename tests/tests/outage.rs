//! Consul stopped for 10 s and started again during an event storm.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hax_e2e::{assert_no_violations, event_storm, wait_for, Env, Options, T};
use hax_testkit::dev_agent::AgentMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_outage_during_an_event_storm() {
    const OUTAGE: Duration = Duration::from_secs(10);
    let mut env = Env::start(Options {
        mode: AgentMode::Persistent,
        ..Options::default()
    })
    .await;
    let peers = Arc::new(env.connect_peers(3).await);

    // The storm: every peer sends a process event every 50 ms, without
    // waiting for confirmations, before, during and after the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let storm = event_storm(&peers, &stop, Duration::from_millis(50));
    wait_for("events confirmed before the outage", T, || async {
        peers
            .iter()
            .all(|p| p.stats().confirmed >= 10)
            .then_some(())
    })
    .await;

    env.agent.kill();
    env.wait_metrics("hax to see the outage", |m| m.n("hax_consul_outage") == 1)
        .await;
    let confirmed_at_kill: Vec<u64> = peers.iter().map(|p| p.stats().confirmed).collect();
    tokio::time::sleep(OUTAGE).await;
    // Nothing is confirmed that is not durable: while Consul is away the
    // peers' events wait.
    for p in peers.iter() {
        assert!(!p.unconfirmed().is_empty(), "{}: all confirmed", p.fid());
    }
    eprintln!(
        "during the outage: {} events unconfirmed, {} confirmed since the kill",
        peers.iter().map(|p| p.unconfirmed().len()).sum::<usize>(),
        peers
            .iter()
            .zip(&confirmed_at_kill)
            .map(|(p, c)| p.stats().confirmed - c)
            .sum::<u64>()
    );
    let back = std::time::Instant::now();
    env.agent.start_again().await.expect("agent back");
    let confirmed_at_restart: Vec<u64> = peers.iter().map(|p| p.stats().confirmed).collect();
    wait_for(
        "events confirmed again",
        Duration::from_secs(30),
        || async {
            peers
                .iter()
                .zip(&confirmed_at_restart)
                .all(|(p, c)| p.stats().confirmed > *c)
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "confirmations resumed {:?} after the agent was started again",
        back.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let sent = storm.await.unwrap();
    for p in peers.iter() {
        p.wait_all_confirmed(Duration::from_secs(30)).await.unwrap();
    }
    eprintln!(
        "every event confirmed {:?} after the agent was started again; {} events",
        back.elapsed(),
        sent.iter().map(Vec::len).sum::<usize>()
    );

    // Nothing lost: each process's last event is its recorded state, and the
    // BQ holds every event in order (a publish whose answer the outage lost
    // may be applied twice: a repeat of the same state in a row).
    let repeats = env.assert_events_recorded(&peers, &sent).await;
    for (p, sent) in peers.iter().zip(&sent) {
        let s = p.stats();
        assert_eq!(
            (s.sent, s.confirmed, s.resent),
            (sent.len() as u64, s.sent, 0)
        );
    }
    eprintln!("BQ entries applied twice: {repeats}");
    assert_eq!(env.metrics().await.n("hax_consul_outage"), 0);
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}
