//! The RC leader's periodic statistics, against the emulator's model of
//! Motr: filesystem statistics in `stats/filesystem`, byte counts per
//! ioservice, pool version and user, and the totals by pool-version state
//! in `bytecount/<state>`; the updaters outlive failing Motr calls and
//! Consul writes and write again the next period, only the leader writes,
//! a cluster without ioservices does not make them spin, and a Motr call in
//! progress does not hold up the stop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hax_consul::schema::{keys, ByteCount, FsStatsRecord, PverHealth};
use hax_core::{FsStats, PverByteCount, PverState};
use hax_e2e::{
    ft, ios_fid, json, pool_fid, pver_fid, stats_options, wait_for, Env, Fault, Options, T,
};
use hax_sim::{ClientOp, PoolDef, PverDef, SimControl};

const EIO: i32 = -5;
const ETIMEDOUT: i32 = -110;

fn fs(free: u64) -> FsStats {
    FsStats {
        free_seg: free,
        total_seg: 1 << 40,
        free_disk: 10 * free,
        avail_disk: 9 * free,
        total_disk: 1 << 44,
        svc_total: 3,
        svc_replied: 3,
    }
}

/// A pool over the three ioservices with two pool versions: 4+2 healthy
/// and 1+0 degraded.
async fn define_pool(ctl: &SimControl) {
    let pver = |i, state, n, k| PverDef {
        fid: pver_fid(i),
        state,
        data_units: n,
        parity_units: k,
        pool_width: n + k,
        unit_size: 1 << 20,
    };
    ctl.define_pool(PoolDef {
        fid: pool_fid(),
        ioservices: (0..3).map(ios_fid).collect(),
        pvers: vec![
            pver(0, PverState::Healthy, 4, 2),
            pver(1, PverState::Degraded, 1, 0),
        ],
    })
    .await
    .expect("pool defined");
}

/// Ioservice `i` holds 6000·(i+1) bytes of user 1 in pool version 0 and
/// `extra` bytes of user 7 in pool version 1.
async fn set_counters(ctl: &SimControl, i: usize, extra: u64) {
    ctl.set_counters(
        ios_fid(i),
        vec![
            PverByteCount {
                pver: pver_fid(0),
                user_id: 1,
                byte_count: 6000 * (i as u64 + 1),
                object_count: i as u64 + 1,
            },
            PverByteCount {
                pver: pver_fid(1),
                user_id: 7,
                byte_count: extra,
                object_count: 1,
            },
        ],
    )
    .await
    .expect("counters");
}

async fn fs_record(env: &Env) -> Option<FsStatsRecord> {
    env.kv.fs_stats().await.expect("stats/filesystem")
}

async fn totals(env: &Env) -> BTreeMap<String, serde_json::Value> {
    env.kv.bytecount_entries().await.expect("bytecount/")
}

fn expected_totals(h: u64, d: u64, c: u64, x: u64) -> BTreeMap<String, serde_json::Value> {
    [
        ("healthy", h),
        ("degraded", d),
        ("critical", c),
        ("damaged", x),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into()))
    .collect()
}

fn runs(m: &hax_e2e::Metrics, updater: &str, outcome: &str) -> u64 {
    m.n(&format!(
        "hax_stats_runs_total{{updater=\"{updater}\",outcome=\"{outcome}\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_and_byte_counts_reach_consul() {
    let env = Env::start(stats_options(250, 250)).await;
    let ctl = env.control().await;
    define_pool(&ctl).await;
    ctl.set_fs_stats(fs(1000)).await.expect("fs stats");
    for i in 0..3 {
        set_counters(&ctl, i, 500).await;
    }
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let _peers = env.ioservices_up(3).await;

    let record = wait_for("stats/filesystem", T, || async { fs_record(&env).await }).await;
    let s = record.stats;
    assert_eq!(
        (
            s.fs_free_seg,
            s.fs_total_seg,
            s.fs_free_disk,
            s.fs_avail_disk
        ),
        (1000, 1 << 40, 10_000, 9000)
    );
    assert_eq!(
        (s.fs_total_disk, s.fs_svc_total, s.fs_svc_replied),
        (1 << 44, 3, 3)
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        record.timestamp >= before - 1.0 && record.timestamp <= now + 1.0,
        "{record:?}"
    );
    assert_eq!(&record.date[4..5], "-");
    assert_eq!(&record.date[10..11], "T", "{record:?}");

    // One key per (ioservice, pool version, user), in the original's format.
    wait_for("every byte count recorded", T, || async {
        (env.kv.byte_counts().await.expect("ioservices/").len() == 6).then_some(())
    })
    .await;
    let counts = env.kv.byte_counts().await.expect("ioservices/");
    for i in 0..3 {
        let of = |pver, user| {
            counts
                .iter()
                .find(|(ios, p, u, _)| *ios == ft(ios_fid(i)) && *p == ft(pver) && *u == user)
                .map(|c| c.3)
        };
        assert_eq!(
            of(pver_fid(0), 1),
            Some(ByteCount {
                bc: 6000 * (i as u64 + 1),
                object_cnt: i as u64 + 1
            })
        );
        assert_eq!(
            of(pver_fid(1), 7),
            Some(ByteCount {
                bc: 500,
                object_cnt: 1
            })
        );
    }
    let raw = env
        .client
        .kv_get(&keys::ioservice_user(ft(ios_fid(0)), ft(pver_fid(0)), 1))
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(raw.value, br#"{"bc": 6000, "object_cnt": 1}"#);

    // Pool version 0 (4+2) holds 36000 bytes, a third of them parity;
    // pool version 1 (1+0) 1500 bytes of data.
    wait_for("the byte count totals", T, || async {
        (totals(&env).await == expected_totals(24_000, 1500, 0, 0)).then_some(())
    })
    .await;
    let raw = env
        .client
        .kv_get(&PverHealth::Healthy.key())
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(raw.value, b"24000");

    // A pool version that changes state moves its bytes.
    ctl.set_pver_state(pver_fid(0), PverState::Critical)
        .await
        .expect("pver state");
    wait_for("the bytes of the critical pool version", T, || async {
        (totals(&env).await == expected_totals(0, 1500, 24_000, 0)).then_some(())
    })
    .await;

    // hare-status --bytecount, served natively.
    let (code, body) = env
        .http_get("/v1/cluster/status/bytecount")
        .await
        .expect("GET");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"bytecount": {"critical": 24000, "damaged": 0, "degraded": 1500, "healthy": 0}})
    );
    let m = env.metrics().await;
    assert!(runs(&m, "filesystem", "written") >= 1);
    assert!(runs(&m, "bytecount", "written") >= 2);
    assert_eq!(runs(&m, "filesystem", "failed"), 0);
    assert_eq!(runs(&m, "bytecount", "failed"), 0);
    env.assert_no_contract_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updaters_survive_failures_and_write_again() {
    let env = Env::start(Options {
        proxy: true,
        ..stats_options(200, 200)
    })
    .await;
    let ctl = env.control().await;
    define_pool(&ctl).await;
    ctl.set_fs_stats(fs(1000)).await.expect("fs stats");
    for i in 0..3 {
        set_counters(&ctl, i, 500).await;
    }
    let _peers = env.ioservices_up(3).await;
    wait_for("the first statistics", T, || async {
        let fs_ok = fs_record(&env).await.is_some();
        let bc_ok = totals(&env).await == expected_totals(24_000, 1500, 0, 0);
        (fs_ok && bc_ok).then_some(())
    })
    .await;

    // Motr fails the next two filesystem fetches, then has new figures.
    let failed = runs(&env.metrics().await, "filesystem", "failed");
    ctl.fail_next(ClientOp::FsStats, 2, EIO)
        .await
        .expect("fault");
    ctl.set_fs_stats(fs(2000)).await.expect("fs stats");
    wait_for("the new figures after two failed fetches", T, || async {
        let r = fs_record(&env).await?;
        (r.stats.fs_free_seg == 2000).then_some(())
    })
    .await;
    assert_eq!(
        runs(&env.metrics().await, "filesystem", "failed"),
        failed + 2
    );

    // Consul refuses the next two writes of stats/filesystem.
    let refused = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&refused);
    env.proxy
        .as_ref()
        .expect("proxy")
        .set_schedule(Some(Box::new(move |_, method, path| {
            let ours = method == "PUT" && path.starts_with("/v1/kv/stats/filesystem");
            if ours && r.fetch_add(1, Ordering::SeqCst) < 2 {
                Fault::Refuse(500)
            } else {
                Fault::Pass
            }
        })));
    ctl.set_fs_stats(fs(3000)).await.expect("fs stats");
    wait_for("the new figures after two refused writes", T, || async {
        let r = fs_record(&env).await?;
        (r.stats.fs_free_seg == 3000).then_some(())
    })
    .await;
    assert!(
        refused.load(Ordering::SeqCst) >= 3,
        "two refused, then written"
    );
    assert!(runs(&env.metrics().await, "filesystem", "failed") >= failed + 3);

    // Byte counts: an ioservice's counters fail once (the others are still
    // recorded), then a pool version's state (the totals wait for the next
    // period); the next periods record the new counts.
    let failed = runs(&env.metrics().await, "bytecount", "failed");
    ctl.fail_next(ClientOp::ProcCounters, 1, EIO)
        .await
        .expect("fault");
    env.wait_metrics("a byte count run with a failed fetch", |m| {
        runs(m, "bytecount", "failed") > failed
    })
    .await;
    ctl.fail_next(ClientOp::PverStatus, 1, ETIMEDOUT)
        .await
        .expect("fault");
    set_counters(&ctl, 2, 2500).await;
    env.wait_metrics("a byte count run with a failed state", |m| {
        runs(m, "bytecount", "failed") > failed + 1
    })
    .await;
    wait_for("the new byte counts", T, || async {
        (totals(&env).await == expected_totals(24_000, 3500, 0, 0)).then_some(())
    })
    .await;
    env.assert_no_contract_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_rc_leader_writes() {
    let env = Env::start(stats_options(200, 200)).await;
    let ctl = env.control().await;
    define_pool(&ctl).await;
    for i in 0..3 {
        set_counters(&ctl, i, 500).await;
    }
    let _peers = env.ioservices_up(3).await;
    env.wait_rconfc().await;

    // Another node leads (same session, another value).
    let lead = |node: String| {
        let env = &env;
        async move {
            assert!(env
                .client
                .kv_acquire(keys::LEADER, node.as_bytes(), &env.sample.session)
                .await
                .expect("leader"));
        }
    };
    lead("srvnode-elsewhere".to_owned()).await;
    let m = env.metrics().await;
    let (fs0, bc0) = (
        runs(&m, "filesystem", "skipped"),
        runs(&m, "bytecount", "skipped"),
    );
    // Once a run of each saw it, nothing more is written.
    env.wait_metrics("a run of each updater to skip", |m| {
        runs(m, "filesystem", "skipped") > fs0 && runs(m, "bytecount", "skipped") > bc0
    })
    .await;
    env.client.kv_delete(keys::FS_STATS).await.expect("delete");
    env.client
        .kv_delete_tree(keys::BYTECOUNT_PREFIX)
        .await
        .expect("delete");
    let m = env.metrics().await;
    let (fs1, bc1) = (
        runs(&m, "filesystem", "skipped"),
        runs(&m, "bytecount", "skipped"),
    );
    env.wait_metrics("two more runs of each updater", |m| {
        runs(m, "filesystem", "skipped") >= fs1 + 2 && runs(m, "bytecount", "skipped") >= bc1 + 2
    })
    .await;
    assert!(fs_record(&env).await.is_none());
    assert!(totals(&env).await.is_empty());

    lead(env.sample.node.clone()).await;
    wait_for("statistics from the leader again", T, || async {
        let fs_ok = fs_record(&env).await.is_some();
        (fs_ok && !totals(&env).await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ioservices_no_spinning() {
    let period = Duration::from_millis(200);
    let t0 = Instant::now();
    let env = Env::start(Options {
        ioservices: 0,
        ..stats_options(0, period.as_millis() as u64)
    })
    .await;
    // Nothing to wait for: rconfc starts at once.
    env.wait_rconfc().await;
    let m = env
        .wait_metrics("three byte count periods", |m| {
            runs(m, "bytecount", "skipped") >= 3
        })
        .await;
    let skipped = runs(&m, "bytecount", "skipped");
    let bound = (t0.elapsed().as_millis() / period.as_millis()) as u64 + 1;
    assert!(
        skipped <= bound,
        "{skipped} runs in {:?}: the updater spins",
        t0.elapsed()
    );
    assert_eq!(runs(&m, "bytecount", "written"), 0);
    assert!(totals(&env).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_motr_call_does_not_hold_up_the_stop() {
    let mut env = Env::start(stats_options(200, 0)).await;
    let ctl = env.control().await;
    define_pool(&ctl).await;
    // The first fetch, once rconfc runs, takes a minute.
    ctl.delay_next(ClientOp::FsStats, 1, Duration::from_secs(60))
        .await
        .expect("delay");
    let _peers = env.ioservices_up(3).await;
    env.wait_metrics("the slow fetch under way", |m| {
        m.n("hax_stats_run_in_progress{updater=\"filesystem\"}") == 1
    })
    .await;
    // hax exits well before the call would have answered (T is a quarter
    // of the delay), and cleanly.
    env.sigterm();
    let status = env.wait_exit(T).await;
    assert!(status.success(), "{status}");
    assert!(fs_record(&env).await.is_none());
}
