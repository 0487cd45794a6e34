//! Keepalive probes: hax asks every linked process for a keepalive reply each
//! round and records the answers in `<node>/keepalive/<fid>`; a process
//! that stops answering is marked not responding while the others stay
//! responding, and is marked responding again once it answers; a process no
//! longer probed (stopped) loses its key; with the interval at 0 nothing is
//! probed or written. A process that answered and then leaves the fencing
//! bound of rounds unanswered (dead without STOPPED, or hung for good) has
//! its link fenced; one that never answered keeps its link.

use hax_consul::schema::KeepaliveStatus;
use hax_core::{Fid, HaMsgData, ProcessEventKind};
use hax_e2e::{ft, wait_for, Env, Options, T};
use hax_sim::{Delivery, LinkOutcome, SimError, SimProcess};

fn keepalive_options(ms: u64) -> Options {
    fencing_options(ms, 0)
}

/// Probes every `ms`, fencing after `rounds` missed (0: never).
fn fencing_options(ms: u64, rounds: u32) -> Options {
    Options {
        hax_args: vec![
            "--motr-keepalive-interval-ms".into(),
            ms.to_string(),
            "--motr-keepalive-fence-rounds".into(),
            rounds.to_string(),
        ],
        ..Options::default()
    }
}

async fn status(env: &Env, fid: Fid) -> Option<KeepaliveStatus> {
    env.kv
        .keepalive_status(&env.sample.node, ft(fid))
        .await
        .expect("<node>/keepalive/<fid>")
}

/// Waits until the record of `fid` satisfies `pred`; returns it.
async fn wait_status(
    env: &Env,
    fid: Fid,
    what: &str,
    pred: impl Fn(&KeepaliveStatus) -> bool,
) -> KeepaliveStatus {
    let pred = &pred;
    wait_for(&format!("{what} ({fid})"), T, || async move {
        status(env, fid).await.filter(|s| pred(s))
    })
    .await
}

/// Every peer's counter grows past what it is now; returns the new records.
async fn counters_grow(env: &Env, peers: &[&SimProcess]) -> Vec<KeepaliveStatus> {
    let mut out = Vec::new();
    for p in peers {
        let before = wait_status(env, p.fid(), "a responding record", |s| s.responding).await;
        let after = wait_status(env, p.fid(), "the counter to grow", |s| {
            s.responding && s.counter > before.counter
        })
        .await;
        assert_eq!(after.missed, 0, "{after:?}");
        assert!(
            after.replied_at >= before.replied_at,
            "{before:?} {after:?}"
        );
        out.push(after);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_recorded_and_a_silent_process_is_marked() {
    let mut env = Env::start(keepalive_options(200)).await;
    let peers = env.connect_peers(3).await;

    let first = counters_grow(&env, &peers.iter().collect::<Vec<_>>()).await;
    for s in &first {
        assert!(
            s.replied_at.ends_with('Z') && s.replied_at.contains('T'),
            "{s:?}"
        );
    }

    // The second process stops answering (a hung m0d).
    let silent = &peers[1];
    silent.set_delivery(Delivery::Never);
    let lost = wait_status(&env, silent.fid(), "the silent process marked", |s| {
        !s.responding
    })
    .await;
    assert!(lost.missed >= 3, "{lost:?}");
    // Its last reply's counter is kept.
    assert!(lost.counter >= first[1].counter, "{lost:?}");
    // What the alert on processes not answering reads.
    env.wait_metrics("one process not responding", |m| {
        m.get("hax_keepalive_not_responding") == 1.0
    })
    .await;
    // The others kept answering meanwhile.
    counters_grow(&env, &[&peers[0], &peers[2]]).await;

    // It answers again.
    silent.set_delivery(Delivery::Auto);
    let back = wait_status(&env, silent.fid(), "the process responding again", |s| {
        s.responding && s.missed == 0
    })
    .await;
    assert!(back.counter > lost.counter, "{lost:?} {back:?}");
    env.wait_metrics("every process responding", |m| {
        m.get("hax_keepalive_not_responding") == 0.0
    })
    .await;
    let run = env.runs();
    let fid = silent.fid().to_string();
    let warned: Vec<_> = env
        .log_messages(run, "process does not answer keepalives")
        .into_iter()
        .filter(|l| l["process"] == fid.as_str())
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["level"], "WARN");
    assert!(env.log_has(run, "process answers keepalives again"));

    let m = env.metrics().await;
    assert!(m.n("hax_keepalive_requests_total") >= 3 * 3, "{m:?}");
    assert!(m.n("hax_keepalive_replies_total") >= 3 * 2, "{m:?}");
    assert!(m.n("hax_keepalive_missed_total") >= 3, "{m:?}");
    // hax's own link is not probed, and only the peers have keys.
    let keys = env
        .kv
        .keepalive_keys(&env.sample.node)
        .await
        .expect("keepalive keys");
    assert_eq!(keys.len(), 3, "{keys:?}");
    // A process that stopped is no longer probed: its key goes, the
    // others' stay.
    let stopped = &peers[2];
    stopped
        .send_process_event(ProcessEventKind::Stopped)
        .unwrap();
    wait_for("the stopped process's key to go", T, || async {
        status(&env, stopped.fid()).await.is_none().then_some(())
    })
    .await;
    counters_grow(&env, &[&peers[0], &peers[1]]).await;
    let keys = env
        .kv
        .keepalive_keys(&env.sample.node)
        .await
        .expect("keepalive keys");
    assert_eq!(keys.len(), 2, "{keys:?}");
    env.assert_no_contract_violations();

    // The probes do not hold up the stop.
    env.sigterm();
    let t = std::time::Instant::now();
    let status = env.wait_exit(T).await;
    eprintln!("hax exited with {status} {:?} after SIGTERM", t.elapsed());
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_zero_probes_nothing() {
    let env = Env::start(keepalive_options(0)).await;
    // Each peer's STARTED event is recorded in Consul and confirmed: hax
    // has been handling these links for a full pipeline round trip.
    let peers = env.connect_started(2).await;
    for p in &peers {
        assert!(env.process_status(p.fid()).await.is_some());
        assert!(
            !p.received()
                .iter()
                .any(|r| matches!(r.msg.data, HaMsgData::KeepaliveReq { .. })),
            "a keepalive request reached {}",
            p.fid()
        );
        assert_eq!(status(&env, p.fid()).await, None);
    }
    let keys = env
        .kv
        .keepalive_keys(&env.sample.node)
        .await
        .expect("keepalive keys");
    assert!(keys.is_empty(), "{keys:?}");
    let m = env.metrics().await;
    assert_eq!(m.n("hax_keepalive_requests_total"), 0);
    assert_eq!(
        m.n("hax_messages_total{direction=\"out\",type=\"keepalive_req\"}"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_stops_answering_is_fenced() {
    const ROUNDS: u32 = 4;
    let env = Env::start(fencing_options(200, ROUNDS)).await;
    let peers = env.connect_peers(2).await;
    // A peer without a keepalive handler (m0ham): it never answers.
    let mut cfg = env.peer_config(2);
    cfg.delivery = Delivery::Never;
    let mute = SimProcess::connect(cfg).await.unwrap();
    assert_eq!(mute.entrypoint().unwrap().outcome, LinkOutcome::New);
    counters_grow(&env, &peers.iter().collect::<Vec<_>>()).await;
    let before = env.wait_idle().await;
    assert_eq!(before.n("hax_keepalive_fenced_total"), 0);

    // The first process dies without a word (no STOPPED, its link left
    // at hax).
    let dead = &peers[0];
    dead.vanish();
    let m = env
        .wait_metrics("the dead process's link fenced and disconnected", |m| {
            m.n("hax_keepalive_fenced_total") == 1
                && m.n("hax_links_disconnected_total")
                    == before.n("hax_links_disconnected_total") + 1
        })
        .await;
    assert_eq!(m.n("hax_links"), before.n("hax_links") - 1, "{m:?}");
    // Coming back, it learns that hax ended its link.
    assert!(matches!(dead.reattach().await, Err(SimError::Fenced)));
    // Its record goes with its link.
    wait_for("the dead process's key to go", T, || async {
        status(&env, dead.fid()).await.is_none().then_some(())
    })
    .await;
    let run = env.runs();
    let fenced: Vec<_> = env
        .log_messages(
            run,
            "process stopped answering keepalives: its links are fenced",
        )
        .into_iter()
        .map(|l| l["process"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(fenced, vec![dead.fid().to_string()]);

    // The peer that never answered is marked, and keeps its link however
    // long it stays mute; the other answers on.
    wait_status(&env, mute.fid(), "the mute peer past the bound", |s| {
        !s.responding && s.missed >= 2 * ROUNDS
    })
    .await;
    counters_grow(&env, &[&peers[1]]).await;
    let m = env.metrics().await;
    assert_eq!(m.n("hax_keepalive_fenced_total"), 1, "{m:?}");
    assert_eq!(m.n("hax_links"), before.n("hax_links") - 1, "{m:?}");
    assert_eq!(mute.state(), hax_sim::LinkState::Up);
    env.assert_no_contract_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_silent_at_the_stop_are_fenced_together() {
    // Never fenced for their silence while hax runs: only the stop does.
    let mut env = Env::start(fencing_options(200, 0)).await;
    let peers = env.connect_peers(3).await;
    counters_grow(&env, &peers.iter().collect::<Vec<_>>()).await;
    // Two die without a word; the third answers on.
    peers[0].vanish();
    peers[2].vanish();
    for dead in [&peers[0], &peers[2]] {
        wait_status(&env, dead.fid(), "a missed round recorded", |s| {
            s.missed >= 1
        })
        .await;
    }
    counters_grow(&env, &[&peers[1]]).await;
    env.sigterm();
    let status = env.wait_exit(T).await;
    assert!(status.success(), "exit status {status}");
    let run = env.runs();
    let fenced = env.log_messages(run, "processes silent at the stop fenced together");
    assert_eq!(fenced.len(), 1, "{fenced:?}");
    let want = [peers[0].fid().to_string(), peers[2].fid().to_string()];
    let listed = fenced[0]["processes"].as_str().unwrap_or_default();
    for fid in &want {
        assert!(listed.contains(fid.as_str()), "{fid} in {listed}");
    }
    assert!(
        !listed.contains(&peers[1].fid().to_string()),
        "{} answering, not fenced: {listed}",
        peers[1].fid()
    );
}
