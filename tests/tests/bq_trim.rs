//! The RC leader trims the broadcast queue: what every node consumed goes,
//! a node that stopped consuming holds it only up to the retention bound,
//! and the peers still get every entry once, in order.

use hax_consul::schema::QueueKind;
use hax_core::{Fid, HaState};
use hax_e2e::{assert_no_violations, device_entry, nvec_sets, wait_for, Env, Options, T};

const RETAIN: u64 = 40;

fn trimming() -> Options {
    Options {
        ioservices: 2,
        hax_env: vec![
            ("HAX_LIMITS_BQ_TRIM_INTERVAL_MS".into(), "100".into()),
            ("HAX_LIMITS_BQ_RETAIN".into(), RETAIN.to_string()),
            ("HAX_LIMITS_BQ_STALLED_AFTER_MS".into(), "3000".into()),
        ],
        ..Options::default()
    }
}

async fn entries_left(env: &Env) -> Vec<u64> {
    let keys = env.client.kv_keys("bq/", None).await.expect("keys").value;
    let mut epochs: Vec<u64> = keys
        .iter()
        .filter_map(|k| QueueKind::Broadcast.parse_entry_key(k))
        .collect();
    epochs.sort_unstable();
    epochs
}

fn state(i: usize) -> (&'static str, HaState) {
    if i % 2 == 0 {
        ("failed", HaState::Failed)
    } else {
        ("online", HaState::Online)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumed_entries_go_and_a_stopped_node_holds_only_the_retained() {
    let env = Env::start(trimming()).await;
    let peers = env.connect_peers(2).await;
    let drive = env.sample.drives[0];
    let drive_notes = |p: &hax_sim::SimProcess| -> Vec<(Fid, HaState)> {
        nvec_sets(&p.received())
            .into_iter()
            .filter(|n| n.len() == 1 && n[0].fid == drive)
            .map(|n| (n[0].fid, n[0].state))
            .collect()
    };
    // Entries alternate, so a lost or repeated one shows.
    const N: usize = 200;
    let mut first = None;
    for i in 0..N {
        let epoch = env
            .publish_bq(&device_entry(&env.sample.node, 0, state(i).0))
            .await;
        first.get_or_insert(epoch);
    }
    let first = first.expect("published");
    let last = env.bq_epoch().await;
    wait_for(
        "every entry consumed and all but the newest trimmed",
        T,
        || async {
            (env.bq_offset().await == last && entries_left(&env).await == vec![last]).then_some(())
        },
    )
    .await;
    let want: Vec<(Fid, HaState)> = (0..N).map(|i| (drive, state(i).1)).collect();
    for p in &peers {
        let deadline = std::time::Instant::now() + T;
        let got = loop {
            let got = drive_notes(p);
            if got.len() >= N || std::time::Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let differs = (0..got.len().min(N)).find(|&k| got[k] != want[k]);
        assert!(
            got.len() == N && differs.is_none(),
            "{}: {} notes for {N} entries, first difference at {differs:?}; hax log:\n{}",
            p.fid(),
            got.len(),
            env.log_text(1)
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("trimmed") || l.contains("skipped"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let m = env.metrics().await;
    // The peers' own events were entries too.
    assert!(m.n("hax_bq_trimmed_total") >= last - first);

    // A node that stopped consuming at `last`: nothing past it goes until
    // more than RETAIN entries are newer.
    env.client
        .kv_put("bq-delivered/node-down", last.to_string())
        .await
        .expect("offset");
    for i in 0..(RETAIN as usize + 30) {
        env.publish_bq(&device_entry(&env.sample.node, 0, state(i).0))
            .await;
    }
    let newest = env.bq_epoch().await;
    wait_for("the queue trimmed to the retention bound", T, || async {
        (env.bq_offset().await == newest
            && entries_left(&env).await == (newest - RETAIN + 1..=newest).collect::<Vec<_>>())
        .then_some(())
    })
    .await;
    let log = env.log_text(1);
    assert!(
        log.contains("node behind the broadcast-queue retention") && log.contains("node-down"),
        "the lagging node is named in the log"
    );
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}
