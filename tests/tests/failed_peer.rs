//! A peer killed mid-stream is declared failed, its link disconnected and
//! its pending messages not delivered; it is fenced; nothing leaks.

use hax_consul::catalog::CheckStatus;
use hax_consul::schema::ProcessState;
use hax_core::{HaState, ProcessEventKind};
use hax_e2e::{assert_no_violations, ft, ios_fid, sets_with, wait_for, Env, Options, T};
use hax_sim::{LinkOutcome, LinkState, SimProcess};

/// How a victim's failure becomes known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Its Consul check goes critical (TRANSIENT, as the original); its
    /// next incarnation's first entrypoint request declares the old one
    /// FAILED.
    ConsulCheck,
    /// Its own STOPPED event reaches hax just before it dies.
    StoppedEvent,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peer_is_failed_and_fenced() {
    const CYCLES: usize = 10;
    let env = Env::start(Options::default()).await;
    let victim = ios_fid(0);
    // As after m0mkfs: the next start of the victim is its first m0d start,
    // every later one a restart after a crash.
    env.kv
        .put_process_restarts(&env.sample.node, ft(victim), 1)
        .await
        .unwrap();
    let mut helpers = Vec::new();
    for i in 1..3 {
        let h = SimProcess::connect(env.peer_config(i)).await.unwrap();
        h.send_process_event(ProcessEventKind::Started).unwrap();
        h.wait_all_confirmed(T).await.unwrap();
        helpers.push(h);
    }
    let incarnation = || {
        let mut cfg = env.peer_config(0);
        // A dying m0d: it never delivers what hax sends it.
        cfg.delivery = hax_sim::Delivery::Never;
        cfg
    };

    // The previous incarnation, its undelivered messages and the metrics
    // before it died.
    let mut prev: Option<(SimProcess, usize, hax_e2e::Metrics)> = None;
    let mut usage = Vec::new();
    for cycle in 0..=CYCLES {
        let v = SimProcess::connect(incarnation()).await.unwrap();
        assert_eq!(v.entrypoint().unwrap().outcome, LinkOutcome::New);
        if let Some((old, pending, before)) = prev.take() {
            // Whichever way its failure became known, the dead incarnation's
            // link went through the disconnect handshake and every message
            // pending on it ended not delivered.
            let m = env
                .wait_metrics("the dead incarnation's link to be disconnected", |m| {
                    m.n("hax_links_disconnected_total")
                        == before.n("hax_links_disconnected_total") + 1
                        && m.not_delivered() >= before.not_delivered() + pending as u64
                })
                .await;
            eprintln!(
                "cycle {cycle}: {pending} messages pending at the dead peer, {} ended not delivered",
                m.not_delivered() - before.not_delivered()
            );
            // It is fenced: coming back, it learns hax disconnected it.
            assert!(matches!(
                old.reattach().await,
                Err(hax_sim::SimError::Fenced)
            ));
            assert_eq!(old.state(), LinkState::Fenced);
            assert_no_violations(std::slice::from_ref(&old));
            for h in &helpers {
                assert!(
                    sets_with(h, victim, HaState::Failed) >= cycle,
                    "{}",
                    h.fid()
                );
            }
            if cycle == 2 {
                usage.push((env.fd_count(), env.thread_count()));
            }
        }
        if cycle == CYCLES {
            v.deliver_all();
            v.set_delivery(hax_sim::Delivery::Auto);
            break;
        }

        v.send_process_event(ProcessEventKind::Started).unwrap();
        v.wait_all_confirmed(T).await.unwrap();
        // Mid-stream: the others' events make broadcasts it never delivers
        // (one after the other: broadcasts asked for together share their
        // messages).
        for (i, h) in helpers.iter().enumerate() {
            h.send_process_event(ProcessEventKind::DtmRecovered)
                .unwrap();
            v.wait_received(2 + i, T).await.unwrap();
        }
        let before = env.wait_idle().await;
        let pending = v.undelivered().len();
        assert!(pending >= 3, "{pending}");

        let route = if cycle % 2 == 0 {
            Route::ConsulCheck
        } else {
            Route::StoppedEvent
        };
        match route {
            Route::ConsulCheck => {
                v.vanish();
                let transient: Vec<usize> = helpers
                    .iter()
                    .map(|h| sets_with(h, victim, HaState::Transient))
                    .collect();
                env.set_check(victim.key, CheckStatus::Critical).await;
                wait_for("the victim recorded STOPPED", T, || async {
                    (env.process_status(victim).await.map(|s| s.state)
                        == Some(ProcessState::Stopped))
                    .then_some(())
                })
                .await;
                wait_for("the helpers to hear TRANSIENT", T, || async {
                    helpers
                        .iter()
                        .zip(&transient)
                        .all(|(h, n)| sets_with(h, victim, HaState::Transient) > *n)
                        .then_some(())
                })
                .await;
                // TRANSIENT does not stop a link: it lives on, its messages
                // pending, until the process is declared FAILED.
                let m = env.wait_idle().await;
                assert_eq!(m.n("hax_links"), before.n("hax_links"));
                assert_eq!(m.not_delivered(), before.not_delivered());
                // The check passes again before the next incarnation.
                let updates = m.n("hax_watch_updates_total");
                env.set_check(victim.key, CheckStatus::Passing).await;
                env.wait_metrics("the passing check to reach hax", |m| {
                    m.n("hax_watch_updates_total") > updates
                })
                .await;
            }
            Route::StoppedEvent => {
                let received =
                    before.n("hax_messages_total{direction=\"in\",type=\"event_process\"}");
                v.send_process_event(ProcessEventKind::Stopped).unwrap();
                env.wait_metrics("hax to receive the STOPPED event", |m| {
                    m.n("hax_messages_total{direction=\"in\",type=\"event_process\"}") > received
                })
                .await;
                v.vanish();
                wait_for("the victim recorded STOPPED", T, || async {
                    (env.process_status(victim).await.map(|s| s.state)
                        == Some(ProcessState::Stopped))
                    .then_some(())
                })
                .await;
            }
        }
        if cycle == 0 {
            usage.push((env.fd_count(), env.thread_count()));
        }
        prev = Some((v, pending, before));
    }

    // Every message hax sent has an outcome; nothing leaked over the cycles.
    let m = env
        .wait_metrics("every sent message to have an outcome", |m| {
            m.sent() == m.outcomes()
        })
        .await;
    assert_eq!(
        m.n("hax_links"),
        4,
        "the helpers, the last incarnation, hax"
    );
    usage.push((env.fd_count(), env.thread_count()));
    eprintln!("hax (fds, threads) after cycle 1, 2 and {CYCLES}: {usage:?}");
    // Open descriptors vary by a few with Consul connections kept for reuse.
    let (fds, threads) = usage[1];
    let (fds_end, threads_end) = usage[2];
    assert!(fds_end <= fds + 3, "fds {usage:?}");
    assert!(threads_end <= threads, "threads {usage:?}");
    assert_no_violations(&helpers);
    env.assert_no_contract_violations();
}
